package service

import (
	"context"
	"fmt"

	"github.com/containerd/errdefs"

	api "github.com/lazyconv/lazyconv/api/lazyconv/v1"
	"github.com/lazyconv/lazyconv/labels"
)

// checkOverwrite refuses a conversion whose target image exists and was not
// made by lazyconv (it has no labels.ImageConvertedFrom), unless the request
// says to overwrite it. An image lazyconv made (an earlier conversion, a
// rule's output) is converted onto again without asking.
//
// The target is checked even when it is the source: an in-place conversion
// replaces what the name points at just as much (the original manifest is
// then no longer referenced and garbage collection takes it), so an image
// lazyconv did not make is converted in place only with overwrite.
//
// The check and the store are not atomic: an image created under the target
// name in between (by a containerd client; lazyconv's API only creates
// images lazyconv made) is replaced.
func (s *Service) checkOverwrite(ctx context.Context, req *api.ConvertRequest) error {
	if req.GetOverwrite() {
		return nil
	}
	img, err := s.is.Get(ctx, req.GetTarget())
	if errdefs.IsNotFound(err) {
		return nil
	}
	if err != nil {
		return fmt.Errorf("looking up the target image %q: %w", req.GetTarget(), err)
	}
	if _, ours := img.Labels[labels.ImageConvertedFrom]; ours {
		return nil
	}
	how := "converting onto it would replace it"
	if req.GetTarget() == req.GetSource() {
		how = "converting it in place would replace it"
	}
	return fmt.Errorf("image %q exists and lazyconv did not make it (it has no %s label); %s: pass --overwrite (overwrite in the request) to do so: %w",
		req.GetTarget(), labels.ImageConvertedFrom, how, errdefs.ErrAlreadyExists)
}
