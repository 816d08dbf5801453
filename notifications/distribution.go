package notifications

import (
	"encoding/json"
	"fmt"
	"net/url"
	"strings"

	"github.com/containerd/errdefs"
	"github.com/opencontainers/go-digest"
)

// distributionEvent is the part of a distribution event
// (distribution/distribution/v3 notifications.Event, or docker/distribution's
// for the v1 envelope) this package reads. Both versions have the same
// shape; v3's target embeds an OCI descriptor instead of distribution's own.
type distributionEvent struct {
	ID     string `json:"id"`
	Action string `json:"action"`
	Target struct {
		MediaType  string `json:"mediaType"`
		Digest     string `json:"digest"`
		Repository string `json:"repository"`
		URL        string `json:"url"`
		Tag        string `json:"tag"`
	} `json:"target"`
	Request struct {
		Host string `json:"host"`
	} `json:"request"`
}

// Manifest media types a push event can carry for an image.
var manifestMediaTypes = map[string]bool{
	"application/vnd.oci.image.manifest.v1+json":                true,
	"application/vnd.oci.image.index.v1+json":                   true,
	"application/vnd.docker.distribution.manifest.v2+json":      true,
	"application/vnd.docker.distribution.manifest.list.v2+json": true,
}

// notManifest tells the media types that are never a manifest push here:
// blobs (layers, configs, opaque data) and Docker schema 1 manifests, which
// nothing pulls any longer.
func notManifest(mt string) bool {
	for _, prefix := range []string{
		"application/vnd.oci.image.layer.",
		"application/vnd.oci.image.config.",
		"application/vnd.oci.empty.",
		"application/vnd.docker.image.rootfs.",
		"application/vnd.docker.container.image.",
		"application/vnd.docker.plugin.",
		"application/vnd.docker.distribution.manifest.v1+",
		"application/octet-stream",
	} {
		if strings.HasPrefix(mt, prefix) {
			return true
		}
	}
	return false
}

// parseDistribution reads a distribution envelope, {"events":[...]}.
func parseDistribution(c *collector, obj map[string]json.RawMessage) error {
	var events []json.RawMessage
	if raw, ok := obj["events"]; ok {
		if err := json.Unmarshal(raw, &events); err != nil {
			return fmt.Errorf("distribution envelope: events is not a list: %w", errdefs.ErrInvalidArgument)
		}
	}
	if len(events) > MaxEvents {
		return fmt.Errorf("distribution envelope holds %d events, more than the limit of %d: %w", len(events), MaxEvents, errdefs.ErrInvalidArgument)
	}
	for i, raw := range events {
		var ev distributionEvent
		if err := json.Unmarshal(raw, &ev); err != nil {
			c.skip(fmt.Sprintf("#%d", i), "malformed event: "+err.Error())
			continue
		}
		name := ev.ID
		if name == "" {
			name = fmt.Sprintf("#%d", i)
		}
		p, ok, reason := distributionPush(ev)
		if !ok {
			c.skip(name, reason)
			continue
		}
		c.add(name, p)
	}
	return nil
}

// distributionPush returns the manifest push ev tells, or why it is not one.
func distributionPush(ev distributionEvent) (Push, bool, string) {
	if ev.Action != "push" {
		return Push{}, false, fmt.Sprintf("action %q", truncate(ev.Action))
	}
	t := ev.Target
	u, err := parseTargetURL(t.URL)
	if err != nil {
		return Push{}, false, "target URL: " + err.Error()
	}
	mt := cleanMediaType(t.MediaType)
	lmt := strings.ToLower(mt)
	switch {
	case u.kind == "blobs":
		return Push{}, false, "blob push"
	case manifestMediaTypes[lmt]:
	case notManifest(lmt):
		return Push{}, false, fmt.Sprintf("push of a %q", truncate(mt))
	case t.Tag != "" || u.kind == "manifests":
	default:
		return Push{}, false, "push of no manifest"
	}

	p := Push{
		Host:       u.host,
		Repository: t.Repository,
		Tag:        t.Tag,
		Digest:     digest.Digest(t.Digest),
		MediaType:  mt,
	}
	if p.Host == "" {
		p.Host = ev.Request.Host
	}
	if p.Repository == "" {
		p.Repository = u.repository
	}
	if u.reference != "" {
		if strings.Contains(u.reference, ":") {
			if p.Digest == "" {
				p.Digest = digest.Digest(u.reference)
			}
		} else if p.Tag == "" {
			p.Tag = u.reference
		}
	}
	return p, true, ""
}

// targetURL is what a target URL tells: the registry host as clients name
// it, and, for a /v2/<name>/manifests/<reference> or /v2/<name>/blobs/<digest>
// path, the kind ("manifests" or "blobs"), repository and reference.
type targetURL struct {
	host, kind, repository, reference string
}

func parseTargetURL(raw string) (targetURL, error) {
	if raw == "" {
		return targetURL{}, nil
	}
	u, err := url.Parse(raw)
	if err != nil {
		return targetURL{}, err
	}
	r := targetURL{host: u.Host}
	// The reference has no '/', so the last "/manifests/" or "/blobs/" is
	// the one after the repository (which may hold either word itself).
	p := u.Path
	mi, bi := strings.LastIndex(p, "/manifests/"), strings.LastIndex(p, "/blobs/")
	var before string
	switch {
	case mi >= 0 && mi > bi:
		r.kind, before, r.reference = "manifests", p[:mi], p[mi+len("/manifests/"):]
	case bi >= 0:
		r.kind, before, r.reference = "blobs", p[:bi], p[bi+len("/blobs/"):]
	default:
		return r, nil
	}
	if r.reference == "" || strings.Contains(r.reference, "/") {
		return targetURL{host: r.host}, nil
	}
	// The registry may be served under a prefix: the repository follows
	// the first "/v2/".
	if i := strings.Index(before, "/v2/"); i >= 0 {
		r.repository = before[i+len("/v2/"):]
	}
	return r, nil
}
