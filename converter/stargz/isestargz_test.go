package stargz_test

import (
	"bytes"
	"context"
	"io"
	"sync/atomic"
	"testing"

	"github.com/containerd/containerd/v2/core/content"
	"github.com/containerd/stargz-snapshotter/estargz"
	ocispec "github.com/opencontainers/image-spec/specs-go/v1"
	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"

	"github.com/lazyconv/lazyconv/converter/convertertest"
	"github.com/lazyconv/lazyconv/converter/stargz"
	"github.com/lazyconv/lazyconv/internal/imagegen"
	"github.com/lazyconv/lazyconv/labels"
)

// countingStore is the real store with every byte read through ReaderAt counted.
type countingStore struct {
	content.Store
	read atomic.Int64
}

func (s *countingStore) ReaderAt(ctx context.Context, desc ocispec.Descriptor) (content.ReaderAt, error) {
	ra, err := s.Store.ReaderAt(ctx, desc)
	if err != nil {
		return nil, err
	}
	return &countingReaderAt{ReaderAt: ra, n: &s.read}, nil
}

type countingReaderAt struct {
	content.ReaderAt
	n *atomic.Int64
}

func (c *countingReaderAt) ReadAt(p []byte, off int64) (int, error) {
	n, err := c.ReaderAt.ReadAt(p, off)
	c.n.Add(int64(n))
	return n, err
}

func TestIsEStargzReadsFooterAndTOCOnlyAndCaches(t *testing.T) {
	f := convertertest.NewFixture(t)
	conv, err := stargz.NewEStargz(stargz.DefaultEStargzOptions())
	require.NoError(t, err)
	big := imagegen.TarBytes(convertertest.Cases()["large file"])
	res, err := f.Conv.ConvertLayer(f.Ctx, conv, putLayer(t, f, big, "gzip"), nil)
	require.NoError(t, err)
	is, err := stargz.IsEStargz(f.Ctx, f.CS, res.Desc.Digest)
	require.NoError(t, err)
	assert.True(t, is, "lazyconv's own output is labelled eStargz when written")

	// An eStargz layer from elsewhere (as pulled from a registry) carries no label.
	blob, err := estargz.Build(io.NewSectionReader(bytes.NewReader(big), 0, int64(len(big))))
	require.NoError(t, err)
	foreignBytes, err := io.ReadAll(blob)
	require.NoError(t, err)
	require.NoError(t, blob.Close())
	foreign := f.PutBlob(t, foreignBytes, ocispec.MediaTypeImageLayerGzip, nil)
	plain := putLayer(t, f, big, "gzip")

	for _, tc := range []struct {
		name string
		desc ocispec.Descriptor
		want bool
	}{
		{"eStargz", foreign, true},
		{"plain gzip", plain, false},
	} {
		t.Run(tc.name, func(t *testing.T) {
			cs := &countingStore{Store: f.CS}
			is, err := stargz.IsEStargz(f.Ctx, cs, tc.desc.Digest)
			require.NoError(t, err)
			assert.Equal(t, tc.want, is)
			first := cs.read.Load()
			assert.Greater(t, first, int64(0))
			assert.Less(t, first, tc.desc.Size/10, "reads only the footer and the TOC, not the %d-byte blob", tc.desc.Size)

			info, err := f.CS.Info(f.Ctx, tc.desc.Digest)
			require.NoError(t, err)
			assert.Equal(t, labels.FormatBool(tc.want), info.Labels[labels.EStargz])

			is, err = stargz.IsEStargz(f.Ctx, cs, tc.desc.Digest)
			require.NoError(t, err)
			assert.Equal(t, tc.want, is)
			assert.Equal(t, first, cs.read.Load(), "a second call reads 0 bytes")
		})
	}
}
