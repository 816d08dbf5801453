// Package notifications receives container registry push notifications over
// HTTP and turns them into the list of manifests that were pushed.
//
// A registry (Docker distribution / CNCF distribution v2 and v3, or Harbor)
// is configured to POST an event to this node for every push, so that an
// image is converted where it arrives, right after it was pushed, instead of
// on the first pull. [Handler] serves [Path], reads the notification, keeps
// the manifest pushes (pulls, deletes, blob mounts and blob pushes are left
// out), validates every one and hands them to a callback; [Serve] runs that
// handler on its own listener.
//
// Two envelope families are understood:
//
//   - Docker distribution events (Content-Type
//     application/vnd.docker.distribution.events.v1+json from registry 2.x,
//     application/vnd.docker.distribution.events.v2+json from distribution
//     v3): {"events":[{"action":"push","target":{...},"request":{...}}]}.
//   - Harbor webhooks (HTTP policy, Content-Type application/json:
//     {"type":"PUSH_ARTIFACT","event_data":{...}}, or the CloudEvents
//     flavour, application/cloudevents+json with type "harbor.artifact.pushed").
//
// Delivery is at least once: distribution keeps an in-memory queue per
// endpoint and posts every event again until it gets a 2xx or 3xx answer, and
// Harbor's job service retries a failed webhook a few times. The callback must
// therefore be idempotent (the same push may arrive twice, or again after a
// restart of the registry's queue), and it can ask for redelivery: an error
// the callback returns as unavailable or resource-exhausted is answered with
// 503 and "Retry-After: 1", which makes distribution try again after its
// backoff. Any other non-2xx answer is retried as well by distribution, which
// never drops an event and sends them one by one: a permanently failing event
// blocks the registry's queue for this endpoint, so the handler answers 200
// for everything it merely ignores, including events it finds invalid.
//
// The body is untrusted (anyone who can reach the port can post): reading is
// bounded, every push is validated (host, repository path, tag, digest),
// invalid events are skipped and logged at debug level, and a bearer token can
// be required.
package notifications

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"mime"
	"regexp"
	"strings"

	"github.com/containerd/errdefs"
	"github.com/containerd/log"
	"github.com/opencontainers/go-digest"
)

// Path is the URL path the handler serves.
const Path = "/notifications"

// DefaultMaxBodyBytes is the body limit used when Config.MaxBodyBytes is 0.
const DefaultMaxBodyBytes int64 = 1 << 20

// MaxEvents is the most events (distribution) or resources (Harbor) one
// request may hold; a request with more is refused as invalid.
const MaxEvents = 1000

// Content types of the notifications this package understands.
const (
	// MediaTypeDistributionEventsV1 is the envelope media type of Docker
	// registry 2.x (docker/distribution).
	MediaTypeDistributionEventsV1 = "application/vnd.docker.distribution.events.v1+json"
	// MediaTypeDistributionEventsV2 is the envelope media type of
	// distribution v3 (distribution/distribution/v3).
	MediaTypeDistributionEventsV2 = "application/vnd.docker.distribution.events.v2+json"
	// MediaTypeJSON is what Harbor's default webhook format is sent as.
	MediaTypeJSON = "application/json"
	// MediaTypeCloudEvents is what Harbor's CloudEvents webhook format is
	// sent as (CloudEvents structured mode).
	MediaTypeCloudEvents = "application/cloudevents+json"
)

// ErrUnsupportedContentType is returned (wrapped) by Parse for a content type
// it does not know when the body is not one of the known formats either; the
// handler answers it with 415. It wraps errdefs.ErrInvalidArgument.
var ErrUnsupportedContentType = fmt.Errorf("unsupported notification content type: %w", errdefs.ErrInvalidArgument)

// Push is one manifest pushed to a registry, as a notification tells it.
type Push struct {
	// Host is the registry host[:port] as clients name it, e.g.
	// "127.0.0.1:5000" or "registry.example.com".
	Host string
	// Repository is the repository path within the registry, e.g. "team/app".
	Repository string
	// Tag is the tag pushed, "" when the manifest was pushed by digest.
	Tag string
	// Digest is the manifest's digest, "" if the sender did not say (Harbor
	// sometimes).
	Digest digest.Digest
	// MediaType is the manifest's media type when the sender gave it.
	MediaType string
}

// Ref returns "host/repository:tag", or "host/repository@digest" when there
// is no tag.
func (p Push) Ref() string {
	name := p.Host + "/" + p.Repository
	switch {
	case p.Tag != "":
		return name + ":" + p.Tag
	case p.Digest != "":
		return name + "@" + p.Digest.String()
	}
	return name
}

// Config configures the receiver.
type Config struct {
	// Address is the host:port to listen on; "" disables the receiver.
	Address string
	// Token, if set, must be carried by every request as
	// "Authorization: Bearer <token>" (compared in constant time); requests
	// without it are answered 401.
	Token string
	// MaxBodyBytes bounds the request body (0: DefaultMaxBodyBytes); larger
	// bodies are answered 413.
	MaxBodyBytes int64
}

func (c Config) maxBodyBytes() int64 {
	if c.MaxBodyBytes <= 0 {
		return DefaultMaxBodyBytes
	}
	return c.MaxBodyBytes
}

// format is one of the notification formats.
type format int

const (
	formatUnknown format = iota
	formatJSON           // application/json: Harbor, or whatever the body looks like
	formatDistribution
	formatHarbor
	formatCloudEvents
)

// Parse reads one notification body sent with contentType and returns the
// manifest pushes it holds, each validated and given once, in the order of
// the body. Events that are not manifest pushes, or that do not validate, are
// left out (logged at debug level); a body that is not JSON, or not of the
// shape its content type announces, or that holds more than MaxEvents events,
// is an error. Errors wrap errdefs.ErrInvalidArgument; an unknown content type
// with a body that is none of the known formats wraps
// ErrUnsupportedContentType.
func Parse(contentType string, body []byte) ([]Push, error) {
	return parse(context.Background(), contentType, body)
}

func parse(ctx context.Context, contentType string, body []byte) ([]Push, error) {
	declared := formatOf(contentType)

	var obj map[string]json.RawMessage
	if err := json.Unmarshal(body, &obj); err != nil || obj == nil {
		if declared == formatUnknown {
			return nil, fmt.Errorf("content type %q: %w", truncate(contentType), ErrUnsupportedContentType)
		}
		if err == nil {
			err = errors.New("null")
		}
		return nil, fmt.Errorf("notification body is not a JSON object: %v: %w", err, errdefs.ErrInvalidArgument)
	}

	f := declared
	if f == formatUnknown || f == formatJSON {
		f = sniff(obj)
	}
	c := collector{ctx: ctx, seen: map[pushKey]struct{}{}}
	var err error
	switch f {
	case formatDistribution:
		err = parseDistribution(&c, obj)
	case formatHarbor:
		err = parseHarbor(&c, body)
	case formatCloudEvents:
		err = parseCloudEvents(&c, body)
	default:
		if declared == formatUnknown {
			return nil, fmt.Errorf("content type %q: %w", truncate(contentType), ErrUnsupportedContentType)
		}
		return nil, fmt.Errorf("notification body is neither a distribution envelope nor a Harbor webhook: %w", errdefs.ErrInvalidArgument)
	}
	if err != nil {
		return nil, err
	}
	return c.pushes, nil
}

// formatOf maps a Content-Type header to the format it announces.
func formatOf(contentType string) format {
	mt, _, err := mime.ParseMediaType(contentType)
	if err != nil {
		mt, _, _ = strings.Cut(contentType, ";")
		mt = strings.ToLower(strings.TrimSpace(mt))
	}
	switch mt {
	case MediaTypeDistributionEventsV1, MediaTypeDistributionEventsV2:
		return formatDistribution
	case MediaTypeCloudEvents:
		return formatCloudEvents
	case MediaTypeJSON:
		return formatJSON
	}
	return formatUnknown
}

// sniff guesses the format of a JSON object by its keys.
func sniff(obj map[string]json.RawMessage) format {
	if _, ok := obj["events"]; ok {
		return formatDistribution
	}
	if _, ok := obj["specversion"]; ok {
		return formatCloudEvents
	}
	if _, ok := obj["event_data"]; ok {
		return formatHarbor
	}
	if _, ok := obj["type"]; ok {
		return formatHarbor
	}
	return formatUnknown
}

type pushKey struct {
	host, repository, tag string
	digest                digest.Digest
}

// collector gathers the valid, distinct pushes of one request.
type collector struct {
	ctx    context.Context
	pushes []Push
	seen   map[pushKey]struct{}
}

// add validates p and keeps it unless it was seen before; event names the
// event in the debug log when p is skipped.
func (c *collector) add(event string, p Push) {
	if err := validate(p); err != nil {
		c.skip(event, err.Error())
		return
	}
	k := pushKey{p.Host, p.Repository, p.Tag, p.Digest}
	if _, ok := c.seen[k]; ok {
		return
	}
	c.seen[k] = struct{}{}
	c.pushes = append(c.pushes, p)
}

// skip logs that an event is left out, and why.
func (c *collector) skip(event, reason string) {
	log.G(c.ctx).WithFields(log.Fields{
		"event":  truncate(event),
		"reason": truncate(reason),
	}).Debug("notifications: event skipped")
}

var (
	// repositoryRE is distribution's repository path grammar: lowercase
	// components separated by '/'.
	repositoryRE = regexp.MustCompile(`^[a-z0-9]+(?:(?:[._]|__|[-]*)[a-z0-9]+)*(?:/[a-z0-9]+(?:(?:[._]|__|[-]*)[a-z0-9]+)*)*$`)
	tagRE        = regexp.MustCompile(`^[\w][\w.-]{0,127}$`)
	// hostRE is distribution/reference's domain-and-port grammar: a domain
	// name or bracketed IPv6 address, with an optional port.
	hostRE = regexp.MustCompile(`^(?:(?:[a-zA-Z0-9]|[a-zA-Z0-9][a-zA-Z0-9-]*[a-zA-Z0-9])(?:\.(?:[a-zA-Z0-9]|[a-zA-Z0-9][a-zA-Z0-9-]*[a-zA-Z0-9]))*|\[[a-fA-F0-9:]+\])(?::[0-9]{1,5})?$`)
	// mediaTypeRE is the OCI image-spec's media type grammar (RFC 6838).
	mediaTypeRE = regexp.MustCompile(`^[A-Za-z0-9][A-Za-z0-9!#$&^_.+-]{0,126}/[A-Za-z0-9][A-Za-z0-9!#$&^_.+-]{0,126}$`)
)

const (
	maxRepositoryLen = 255
	maxHostLen       = 255
)

// validate checks every field of p, and that p names a manifest (by tag or
// digest).
func validate(p Push) error {
	switch {
	case p.Host == "":
		return errors.New("no registry host")
	case len(p.Host) > maxHostLen || !hostRE.MatchString(p.Host):
		return fmt.Errorf("invalid registry host %q", truncate(p.Host))
	case p.Repository == "":
		return errors.New("no repository")
	case len(p.Repository) > maxRepositoryLen || !repositoryRE.MatchString(p.Repository):
		return fmt.Errorf("invalid repository %q", truncate(p.Repository))
	case p.Tag != "" && !tagRE.MatchString(p.Tag):
		return fmt.Errorf("invalid tag %q", truncate(p.Tag))
	case p.Tag == "" && p.Digest == "":
		return errors.New("neither tag nor digest")
	case p.MediaType != "" && !mediaTypeRE.MatchString(p.MediaType):
		return fmt.Errorf("invalid media type %q", truncate(p.MediaType))
	}
	if p.Digest != "" {
		if _, err := digest.Parse(p.Digest.String()); err != nil {
			return fmt.Errorf("invalid digest %q: %v", truncate(p.Digest.String()), err)
		}
	}
	return nil
}

// cleanMediaType drops media type parameters and surrounding space.
func cleanMediaType(mt string) string {
	mt, _, _ = strings.Cut(mt, ";")
	return strings.TrimSpace(mt)
}

// truncate shortens untrusted text for errors and logs.
func truncate(s string) string {
	const n = 128
	if len(s) <= n {
		return s
	}
	return strings.ToValidUTF8(s[:n], "") + "…"
}
