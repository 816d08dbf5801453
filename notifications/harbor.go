package notifications

import (
	"encoding/base64"
	"encoding/json"
	"fmt"
	"strings"

	"github.com/containerd/errdefs"
	"github.com/opencontainers/go-digest"
)

// Harbor event types of a manifest push, in the default and the CloudEvents
// webhook formats.
const (
	harborPushArtifact      = "PUSH_ARTIFACT"
	harborCloudEventsPushed = "harbor.artifact.pushed"
)

// harborPayload is Harbor's default webhook format (notifier/model.Payload).
type harborPayload struct {
	Type      string          `json:"type"`
	EventData json.RawMessage `json:"event_data"`
}

// harborCloudEvent is a CloudEvents 1.0 event in structured mode, as Harbor
// 2.10+ sends it (data is Harbor's event_data).
type harborCloudEvent struct {
	SpecVersion string          `json:"specversion"`
	ID          string          `json:"id"`
	Type        string          `json:"type"`
	Data        json.RawMessage `json:"data"`
	DataBase64  string          `json:"data_base64"`
}

// harborEventData is Harbor's notifier/model.EventData, as far as read here.
type harborEventData struct {
	Resources  []json.RawMessage `json:"resources"`
	Repository struct {
		Name         string `json:"name"`
		Namespace    string `json:"namespace"`
		RepoFullName string `json:"repo_full_name"`
	} `json:"repository"`
}

// harborResource is Harbor's notifier/model.Resource. For a push by digest
// Harbor puts the digest in tag too.
type harborResource struct {
	Digest      string `json:"digest"`
	Tag         string `json:"tag"`
	ResourceURL string `json:"resource_url"`
}

// parseHarbor reads Harbor's default webhook format.
func parseHarbor(c *collector, body []byte) error {
	var p harborPayload
	if err := json.Unmarshal(body, &p); err != nil {
		return fmt.Errorf("harbor webhook: %v: %w", err, errdefs.ErrInvalidArgument)
	}
	if p.Type != harborPushArtifact {
		c.skip(p.Type, "harbor event type, not an artifact push")
		return nil
	}
	return parseHarborEventData(c, p.EventData)
}

// parseCloudEvents reads Harbor's CloudEvents webhook format.
func parseCloudEvents(c *collector, body []byte) error {
	var ev harborCloudEvent
	if err := json.Unmarshal(body, &ev); err != nil {
		return fmt.Errorf("cloudevent: %v: %w", err, errdefs.ErrInvalidArgument)
	}
	if ev.SpecVersion == "" || ev.Type == "" {
		return fmt.Errorf("cloudevent without specversion or type: %w", errdefs.ErrInvalidArgument)
	}
	if ev.Type != harborCloudEventsPushed {
		c.skip(ev.Type, "cloudevent type, not an artifact push")
		return nil
	}
	data := ev.Data
	if len(data) == 0 && ev.DataBase64 != "" {
		b, err := base64.StdEncoding.DecodeString(ev.DataBase64)
		if err != nil {
			return fmt.Errorf("cloudevent data_base64: %v: %w", err, errdefs.ErrInvalidArgument)
		}
		data = b
	}
	return parseHarborEventData(c, data)
}

// parseHarborEventData reads the event_data of a Harbor artifact push.
func parseHarborEventData(c *collector, raw json.RawMessage) error {
	var d harborEventData
	if len(raw) > 0 {
		if err := json.Unmarshal(raw, &d); err != nil {
			return fmt.Errorf("harbor event data: %v: %w", err, errdefs.ErrInvalidArgument)
		}
	}
	if len(d.Resources) > MaxEvents {
		return fmt.Errorf("harbor event holds %d resources, more than the limit of %d: %w", len(d.Resources), MaxEvents, errdefs.ErrInvalidArgument)
	}
	repository := d.Repository.RepoFullName
	if repository == "" && d.Repository.Namespace != "" && d.Repository.Name != "" {
		repository = d.Repository.Namespace + "/" + d.Repository.Name
	}
	for i, raw := range d.Resources {
		name := fmt.Sprintf("resource #%d", i)
		var r harborResource
		if err := json.Unmarshal(raw, &r); err != nil {
			c.skip(name, "malformed resource: "+err.Error())
			continue
		}
		c.add(name, harborPush(repository, r))
	}
	return nil
}

// harborPush returns the push a Harbor resource tells; the host is the part
// of resource_url before the first '/' (Harbor's external URL without its
// scheme), the repository repo_full_name or else resource_url's path.
func harborPush(repository string, r harborResource) Push {
	ref := r.ResourceURL
	if _, after, ok := strings.Cut(ref, "://"); ok {
		ref = after
	}
	host, rest, _ := strings.Cut(ref, "/")
	var urlRepo, urlTag, urlDigest string
	if i := strings.IndexByte(rest, '@'); i >= 0 {
		urlRepo, urlDigest = rest[:i], rest[i+1:]
	} else if i := strings.LastIndexByte(rest, ':'); i >= 0 {
		urlRepo, urlTag = rest[:i], rest[i+1:]
	} else {
		urlRepo = rest
	}

	p := Push{Host: host, Repository: repository, Tag: r.Tag, Digest: digest.Digest(r.Digest)}
	if p.Repository == "" {
		p.Repository = urlRepo
	}
	// A push by digest: Harbor gives the digest as the tag.
	if strings.Contains(p.Tag, ":") {
		if p.Digest == "" {
			p.Digest = digest.Digest(p.Tag)
		}
		p.Tag = ""
	}
	if p.Tag == "" && p.Digest == "" {
		p.Tag = urlTag
	}
	if p.Digest == "" {
		p.Digest = digest.Digest(urlDigest)
	}
	return p
}
