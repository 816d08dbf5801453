package service

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"slices"
	"strings"
	"time"

	"github.com/containerd/containerd/v2/core/content"
	"github.com/containerd/containerd/v2/core/events"
	"github.com/containerd/containerd/v2/core/images"
	"github.com/containerd/containerd/v2/core/leases"
	"github.com/containerd/containerd/v2/core/remotes"
	"github.com/containerd/containerd/v2/pkg/namespaces"
	"github.com/containerd/errdefs"
	"github.com/containerd/log"
	"github.com/containerd/platforms"
	"github.com/distribution/reference"
	"github.com/opencontainers/go-digest"
	ocispec "github.com/opencontainers/image-spec/specs-go/v1"

	api "github.com/lazyconv/lazyconv/api/lazyconv/v1"
	"github.com/lazyconv/lazyconv/converter"
	"github.com/lazyconv/lazyconv/labels"
	"github.com/lazyconv/lazyconv/notifications"
	"github.com/lazyconv/lazyconv/remote"
	"github.com/lazyconv/lazyconv/rules"
)

// RulesEnv is what the rules engine needs of the daemon that runs the
// service: containerd's events (image events in, rule failures out) and its
// namespaces (for reconcile).
type RulesEnv struct {
	Events     events.Subscriber
	Publisher  events.Publisher
	Namespaces func(context.Context) ([]string, error)
}

// StartRules runs the configured rules until ctx is done: containerd's image
// events and reconcile trigger them (and registry notifications, when
// notifications.address is set), the service's workers convert. It returns
// the engine (nil without rules) once the event subscription is in place.
func (s *Service) StartRules(ctx context.Context, env RulesEnv) (*rules.Engine, error) {
	if len(s.cfg.Rules) == 0 {
		return nil, nil
	}
	e, err := rules.New(s.cfg.RulesEngine(), s.is, env.Namespaces, s, env.Publisher)
	if err != nil {
		return nil, err
	}
	for _, r := range s.cfg.Rules {
		if r.Push && len(r.Namespaces) == 0 {
			log.G(ctx).Warnf("lazyconv: rule %q pushes what any namespace names %s: whoever can create images in any namespace can have this node push to that registry; list the namespaces it serves", r.TagSuffix, r.Match)
		}
	}
	if env.Events != nil {
		e.Watch(ctx, env.Events)
	}
	e.Start(ctx)
	if n := s.cfg.Notifications; n.Address != "" {
		if !slices.ContainsFunc(s.cfg.Rules, func(r rules.Rule) bool { return r.Push }) {
			log.G(ctx).Warn("lazyconv: notifications are received, but no rule pushes: registry pushes convert nothing")
		}
		addr, _, err := notifications.Serve(ctx, notifications.Config{Address: n.Address, Token: n.Token, MaxBodyBytes: n.MaxBodyBytes},
			func(rctx context.Context, pushes []notifications.Push) error {
				return e.Notified(log.WithLogger(rctx, log.G(ctx)), n.Namespace, pushes)
			})
		if err != nil {
			return nil, fmt.Errorf("notifications: %w", err)
		}
		log.G(ctx).Infof("lazyconv: receiving registry notifications on http://%s%s (into namespace %s)", addr, notifications.Path, n.Namespace)
	}
	return e, nil
}

// RunRule runs one rule job (rules.Worker): it converts the source's
// resolved digest (fetching the manifests, configs and layers of platforms
// that are not local from the source's registry, as a lazy pull would),
// stores the output only while the source name still points at that digest,
// and pushes it when the rule pushes. One lease holds everything from the
// first read to the last write.
func (s *Service) RunRule(ctx context.Context, job rules.Job) (rules.Outcome, error) {
	ctx = s.conversionContext(namespaces.WithNamespace(ctx, job.Namespace))
	src, r := job.Source, job.Rule
	l, err := s.lm.Create(ctx, leases.WithRandomID(), leases.WithExpiration(24*time.Hour), leases.WithLabel(labels.LeaseConverting, src.Name))
	if err != nil {
		return "", fmt.Errorf("creating lease: %w", err)
	}
	defer s.lm.Delete(context.WithoutCancel(ctx), l) //nolint:errcheck // expires anyway; recovered at start-up
	ctx = leases.WithLease(ctx, l.ID)
	if err := s.lm.AddResource(ctx, l, leases.Resource{ID: src.Target.Digest.String(), Type: "content"}); err != nil {
		return "", fmt.Errorf("holding %s under the rule's lease: %w", src.Name, err)
	}
	out := r.Output(src.Name)
	if _, err := reference.ParseNormalizedNamed(out); err != nil {
		return "", fmt.Errorf("the output name %q of %s: %v: %w", out, src.Name, err, errdefs.ErrInvalidArgument)
	}
	if existing, err := s.is.Get(ctx, out); err == nil {
		from, rule := existing.Labels[labels.ImageConvertedFrom], existing.Labels[labels.RuleOutput]
		if _, ours := existing.Labels[labels.ImageConvertedFrom]; ours && (from != src.Name || (rule != "" && rule != r.TagSuffix)) {
			return "", fmt.Errorf("%s is the conversion of %s (rule %q), not of %s by rule %q: not replacing it: %w",
				out, from, rule, src.Name, r.TagSuffix, errdefs.ErrFailedPrecondition)
		}
	}
	resolver := remote.RegistryOptions{}.ResolverFor(src.Name)
	if r.Push {
		if moved, err := s.registryMovedOn(ctx, resolver, src); err != nil || moved {
			return rules.Stale, err
		}
	}
	var pm platforms.MatchComparer
	if len(r.Platforms) > 0 {
		if pm, err = platformMatcher(r.Platforms, false); err != nil {
			return "", err
		}
	} else {
		pm, err = s.sourcePlatforms(ctx, resolver, src, r.Push)
		if err != nil {
			return "", err
		}
	}
	err = s.convertImage(ctx, &api.ConvertRequest{Source: src.Name, Target: out, Format: r.Format, Options: r.Options, Oci: true},
		func(*api.ConvertEvent) error { return nil },
		conversionPin{platforms: pm, source: src.Target.Digest, labels: rules.Labels(r, src)})
	if errors.Is(err, converter.ErrSourceMoved) {
		log.G(ctx).Infof("lazyconv: rule conversion of %s@%s dropped: %v", src.Name, src.Target.Digest, err)
		return rules.Stale, nil
	}
	if err != nil {
		return "", err
	}
	if !r.Push {
		return rules.Converted, nil
	}
	return s.pushRuleOutput(ctx, job, out)
}

// sourcePlatforms matches every platform src lists whose manifest and
// config are local or can be fetched from its registry (fetching them). A
// platform that cannot be had fails the job when the output is to be
// pushed (it would replace a tag with fewer platforms) and is left out,
// with a warning, otherwise.
func (s *Service) sourcePlatforms(ctx context.Context, resolver remotes.Resolver, src images.Image, push bool) (platforms.MatchComparer, error) {
	if !images.IsIndexType(src.Target.MediaType) {
		return platforms.All, nil
	}
	var have []ocispec.Platform
	var missing []string
	var walk func(desc ocispec.Descriptor, depth int64) error
	walk = func(desc ocispec.Descriptor, depth int64) error {
		if limit := converter.LimitsFrom(ctx).MaxIndexDepth; converter.Exceeds(depth, limit) {
			return fmt.Errorf("index %s is nested %d deep, beyond the limit of %d (max_index_depth): %w", desc.Digest, depth, limit, errdefs.ErrInvalidArgument)
		}
		var index ocispec.Index
		if _, err := converter.ReadDocument(ctx, s.cs, &index, desc); err != nil {
			return err
		}
		for _, m := range index.Manifests {
			switch {
			case images.IsIndexType(m.MediaType):
				if err := s.fetcher.Ensure(ctx, resolver, m, desc, src.Name, nil); err != nil {
					return fmt.Errorf("fetching index %s: %w", m.Digest, err)
				}
				if err := walk(m, depth+1); err != nil {
					return err
				}
			case images.IsManifestType(m.MediaType):
				if m.Platform == nil {
					have = append(have, platforms.DefaultSpec())
					continue
				}
				if err := s.ensureManifest(ctx, resolver, src.Name, m, desc); err != nil {
					if !errdefs.IsNotFound(err) {
						return err // the registry failing (tried again), a bad manifest
					}
					missing = append(missing, fmt.Sprintf("%s (%v)", platforms.Format(*m.Platform), err))
					continue
				}
				have = append(have, *m.Platform)
			}
		}
		return nil
	}
	if err := walk(src.Target, 1); err != nil {
		return nil, err
	}
	if len(missing) > 0 {
		text := strings.Join(missing, "; ")
		if push {
			return nil, fmt.Errorf("platforms of %s that cannot be had here or from its registry: %s: the output would replace its tag with fewer platforms: %w",
				src.Name, text, errdefs.ErrNotFound)
		}
		log.G(ctx).Warnf("lazyconv: converting %s without the platforms that cannot be had here or from its registry: %s", src.Name, text)
	}
	return platforms.Any(have...), nil
}

// ensureManifest makes a manifest and its config local, fetching them from
// the image's registry when missing (its layers are fetched when converted).
func (s *Service) ensureManifest(ctx context.Context, resolver remotes.Resolver, imageRef string, m, index ocispec.Descriptor) error {
	if err := s.fetcher.Ensure(ctx, resolver, m, index, imageRef, nil); err != nil {
		return err
	}
	var manifest ocispec.Manifest
	if _, err := converter.ReadDocument(ctx, s.cs, &manifest, m); err != nil {
		return err
	}
	return s.fetcher.Ensure(ctx, resolver, manifest.Config, m, imageRef, nil)
}

// pushRuleOutput pushes a rule's output, unless the registry's source tag
// has moved on from the converted digest (another node converts the newer
// one; Stale), the registry has the output already, or the output would
// replace a tag that holds platforms it lacks. It labels the output pushed.
func (s *Service) pushRuleOutput(ctx context.Context, job rules.Job, out string) (rules.Outcome, error) {
	src := job.Source
	resolver := remote.RegistryOptions{}.ResolverFor(out)
	if moved, err := s.registryMovedOn(ctx, resolver, src); err != nil || moved {
		return rules.Stale, err
	}
	img, err := s.is.Get(ctx, out)
	if err != nil {
		return "", err
	}
	if img.Labels[labels.ConvertedFromDigest] != src.Target.Digest.String() {
		return rules.Stale, nil
	}
	_, there, err := resolver.Resolve(ctx, out)
	switch {
	case err == nil && there.Digest == img.Target.Digest:
		// pushed already (by this node before a restart, or another)
	case err == nil:
		theirs, err := remotePlatforms(ctx, resolver, out, there)
		if err != nil {
			return "", fmt.Errorf("reading the platforms of %s in its registry: %w", out, err)
		}
		ours, err := localPlatforms(ctx, s.cs, img.Target)
		if err != nil {
			return "", err
		}
		var lacking []string
		for _, p := range theirs {
			if !slices.Contains(ours, p) {
				lacking = append(lacking, p)
			}
		}
		if len(lacking) > 0 {
			return "", fmt.Errorf("not pushing %s: the registry's %s holds platforms it lacks (%s): %w",
				out, out, strings.Join(lacking, ", "), errdefs.ErrFailedPrecondition)
		}
		fallthrough
	case errdefs.IsNotFound(err):
		if now, err := s.is.Get(ctx, src.Name); err != nil || now.Target.Digest != src.Target.Digest {
			return rules.Stale, nil
		}
		// Content first, by digest (the long part), then the source checked
		// once more, then the tag: an output of a source the registry's tag
		// has left while the blobs went up is never tagged.
		byDigest, err := remote.SourceOf(out)
		if err != nil {
			return "", err
		}
		if _, err := s.PushImage(ctx, &api.PushRequest{Ref: byDigest.Ref(img.Target.Digest), Local: out, AllPlatforms: true}); err != nil {
			return "", err
		}
		if moved, err := s.registryMovedOn(ctx, resolver, src); err != nil || moved {
			return rules.Stale, err
		}
		// Only the tag is left to write: the root manifest, under it.
		b, err := content.ReadBlob(ctx, s.cs, img.Target)
		if err != nil {
			return "", err
		}
		pusher, err := resolver.Pusher(ctx, out+"@"+img.Target.Digest.String())
		if err != nil {
			return "", err
		}
		if err := remote.PushBytes(ctx, pusher, img.Target, b); err != nil {
			return "", fmt.Errorf("tagging %s: %w", out, err)
		}
	default:
		return "", fmt.Errorf("resolving %s in its registry: %w", out, err)
	}
	update := images.Image{Name: out, Labels: map[string]string{labels.RulePushed: img.Target.Digest.String()}}
	if _, err := s.is.Update(ctx, update, "labels."+labels.RulePushed); err != nil {
		return "", fmt.Errorf("labelling %s pushed: %w", out, err)
	}
	return rules.Converted, nil
}

// registryMovedOn says whether the registry's tag of src points at another
// digest than src's (a source tag it does not have has not moved on).
func (s *Service) registryMovedOn(ctx context.Context, resolver remotes.Resolver, src images.Image) (bool, error) {
	_, desc, err := resolver.Resolve(ctx, src.Name)
	switch {
	case errdefs.IsNotFound(err):
		return false, nil
	case err != nil:
		return false, fmt.Errorf("resolving %s in its registry: %w", src.Name, err)
	case desc.Digest != src.Target.Digest:
		log.G(ctx).Infof("lazyconv: not converting or pushing %s@%s for its rule: the registry's %s is %s", src.Name, src.Target.Digest, src.Name, desc.Digest)
		return true, nil
	}
	return false, nil
}

// PullSource stores the image a registry notified was pushed as ref
// (host/repository:tag) with digest dgst (rules.Puller): its index,
// manifests and configs of every platform, no layers (a conversion fetches
// those it needs), under a lease recovered at start-up if the daemon dies.
//
// It pulls dgst, the digest pushed, unless the registry's tag has moved on
// from it (ErrFailedPrecondition: a later notification names the newer one);
// while the registry does not serve the tag yet (distribution notifies
// while the push is still being written) the digest alone is trusted. The
// image is stored labelled labels.Notified, and only a name that is
// missing or already so labelled is written: an image of the namespace that
// a notification did not make is never moved (ErrAlreadyExists).
func (s *Service) PullSource(ctx context.Context, namespace, ref string, dgst digest.Digest) (images.Image, error) {
	ctx = namespaces.WithNamespace(ctx, namespace)
	if img, err := s.is.Get(ctx, ref); err == nil && img.Labels[labels.Notified] == "" {
		return images.Image{}, fmt.Errorf("%s is an image of namespace %s that no notification made: not moving it: %w", ref, namespace, errdefs.ErrAlreadyExists)
	} else if err != nil && !errdefs.IsNotFound(err) {
		return images.Image{}, err
	}
	resolver := remote.RegistryOptions{}.ResolverFor(ref)
	_, desc, err := resolver.Resolve(ctx, ref)
	switch {
	case err == nil && dgst != "" && desc.Digest != dgst:
		return images.Image{}, fmt.Errorf("the registry's %s is %s now, not the notified %s: %w", ref, desc.Digest, dgst, errdefs.ErrFailedPrecondition)
	case err == nil:
		dgst = desc.Digest
	case !errdefs.IsNotFound(err) || dgst == "":
		return images.Image{}, fmt.Errorf("resolving %s: %w", ref, err)
	}
	src, err := remote.SourceOf(ref)
	if err != nil {
		return images.Image{}, err
	}
	l, err := s.lm.Create(ctx, leases.WithRandomID(), leases.WithExpiration(time.Hour), leases.WithLabel(labels.LeaseConverting, ref))
	if err != nil {
		return images.Image{}, fmt.Errorf("creating lease: %w", err)
	}
	defer s.lm.Delete(context.WithoutCancel(ctx), l) //nolint:errcheck // expires anyway
	ctx = leases.WithLease(ctx, l.ID)
	return remote.PullLazyAs(ctx, s.cs, s.is, s.lm, resolver, src.Ref(dgst),
		images.Image{Name: ref, Labels: map[string]string{labels.Notified: dgst.String()}}, platforms.All)
}

// localPlatforms lists the platforms of an image in the content store.
func localPlatforms(ctx context.Context, cs content.Store, target ocispec.Descriptor) ([]string, error) {
	ps, err := images.Platforms(ctx, cs, target)
	if err != nil {
		return nil, fmt.Errorf("listing the platforms of %s: %w", target.Digest, err)
	}
	out := make([]string, 0, len(ps))
	for _, p := range ps {
		out = append(out, platforms.FormatAll(platforms.Normalize(p)))
	}
	return out, nil
}

// remotePlatforms lists the platforms of a registry's image from its index
// (a single manifest counts as the platform its config names).
func remotePlatforms(ctx context.Context, resolver remotes.Resolver, ref string, desc ocispec.Descriptor) ([]string, error) {
	src, err := remote.SourceOf(ref)
	if err != nil {
		return nil, err
	}
	max := converter.DefaultLimits().MaxDocumentBytes
	b, err := remote.ReadBlob(ctx, resolver, src, desc, max)
	if err != nil {
		return nil, err
	}
	if images.IsIndexType(desc.MediaType) {
		var index ocispec.Index
		if err := decodeJSON(b, &index); err != nil {
			return nil, err
		}
		var out []string
		for _, m := range index.Manifests {
			if m.Platform != nil {
				out = append(out, platforms.FormatAll(platforms.Normalize(*m.Platform)))
			}
		}
		return out, nil
	}
	var manifest ocispec.Manifest
	if err := decodeJSON(b, &manifest); err != nil {
		return nil, err
	}
	cb, err := remote.ReadBlob(ctx, resolver, src, manifest.Config, max)
	if err != nil {
		return nil, err
	}
	var cfg ocispec.Image
	if err := decodeJSON(cb, &cfg); err != nil {
		return nil, err
	}
	return []string{platforms.FormatAll(platforms.Normalize(cfg.Platform))}, nil
}

// decodeJSON decodes a registry's document (read within a size limit).
func decodeJSON(b []byte, v any) error {
	if err := json.Unmarshal(b, v); err != nil {
		return fmt.Errorf("malformed JSON: %v: %w", err, errdefs.ErrInvalidArgument)
	}
	return nil
}
