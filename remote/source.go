// Package remote handles content that may not be local yet: images pulled
// lazily (index, manifests and configs only), layers fetched from their
// source registry on first use, distribution-source labels, and diff pairs.
package remote

import (
	"context"
	"fmt"
	"net"
	"slices"
	"sort"
	"strings"

	"github.com/containerd/containerd/v2/core/content"
	"github.com/containerd/containerd/v2/core/remotes"
	"github.com/containerd/containerd/v2/core/remotes/docker"
	"github.com/containerd/errdefs"
	"github.com/containerd/log"
	"github.com/opencontainers/go-digest"

	"github.com/lazyconv/lazyconv/labels"
)

// RegistryOptions says how to reach the registry of the reference a user
// named. They are the user's for that host only: another registry reached
// through distribution-source labels or a redirect gets neither the
// credentials nor plain HTTP.
type RegistryOptions struct {
	// PlainHTTP talks HTTP, not HTTPS, to the named host (localhost always does).
	PlainHTTP bool
	// Username and Password are basic credentials for the named host, if any.
	Username, Password string
}

// ResolverFor returns containerd's docker resolver for ref: o applies to
// ref's registry host and no other.
func (o RegistryOptions) ResolverFor(ref string) remotes.Resolver {
	host := ""
	if src, err := SourceOf(ref); err == nil {
		host = src.Host
	}
	hosts := docker.ConfigureDefaultRegistries(
		docker.WithAuthorizer(docker.NewDockerAuthorizer(docker.WithAuthCreds(o.credentialsFor(host)))),
		docker.WithPlainHTTP(o.plainHTTPFor(host)),
	)
	return docker.NewResolver(docker.ResolverOptions{Hosts: hosts})
}

// credentialsFor answers a registry's challenge with the credentials only
// when the challenging host is the named one.
func (o RegistryOptions) credentialsFor(named string) func(string) (string, string, error) {
	return func(host string) (string, string, error) {
		if o.Username == "" || named == "" || host != named {
			return "", "", nil
		}
		return o.Username, o.Password, nil
	}
}

// plainHTTPFor allows plain HTTP to localhost, and to the named host when asked.
func (o RegistryOptions) plainHTTPFor(named string) func(string) (bool, error) {
	return func(host string) (bool, error) {
		if o.PlainHTTP && named != "" && host == named {
			return true, nil
		}
		return docker.MatchLocalhost(host)
	}
}

// Source is a repository a blob can be fetched from.
type Source struct {
	Host, Repository string
}

// Ref is the source's reference for a digest: host/repository@digest.
func (s Source) Ref(d digest.Digest) string { return s.Host + "/" + s.Repository + "@" + d.String() }

// Sources lists the repositories a blob's distribution-source labels name,
// in a stable order. containerd keys those labels by the host name without
// its port; lazyconv also writes one keyed by host:port (AddSource), and a
// repository labelled both ways is listed once, with its port.
func Sources(info content.Info) []Source {
	all := labels.DistributionSources(info)
	withPort := map[Source]bool{}
	for host, repos := range all {
		if h := hostname(host); h != host {
			for _, r := range repos {
				withPort[Source{Host: h, Repository: r}] = true
			}
		}
	}
	var out []Source
	for host, repos := range all {
		for _, r := range repos {
			if src := (Source{Host: host, Repository: r}); !withPort[src] {
				out = append(out, src)
			}
		}
	}
	sort.Slice(out, func(i, j int) bool {
		if out[i].Host != out[j].Host {
			return out[i].Host < out[j].Host
		}
		return out[i].Repository < out[j].Repository
	})
	return out
}

// maxLabelSize is containerd's limit on a label's key and value together.
const maxLabelSize = 4096

// AddSource records on a blob that it exists in src, merging the repository
// into the host's list without duplicates. The label is keyed by the host
// name without its port, as containerd's own handler and pusher key it (its
// pusher mounts from it), and, when the host has a port, by host:port too,
// so that lookups and fetches reach a registry on a port of its own.
func AddSource(ctx context.Context, cs content.Manager, d digest.Digest, src Source) error {
	info, err := cs.Info(ctx, d)
	if err != nil {
		return err
	}
	keys := []string{labels.DistributionSourcePrefix + hostname(src.Host)}
	if hostname(src.Host) != src.Host {
		keys = append(keys, labels.DistributionSourcePrefix+src.Host)
	}
	update := map[string]string{}
	for _, key := range keys {
		var repos []string
		if v := info.Labels[key]; v != "" {
			repos = strings.Split(v, ",")
		}
		if slices.Contains(repos, src.Repository) {
			continue
		}
		repos = append(repos, src.Repository)
		sort.Strings(repos)
		value := strings.Join(repos, ",")
		if len(key)+len(value) > maxLabelSize {
			// A blob in very many repositories of one registry (the empty
			// JSON of every referrer, a popular base layer): it is recorded
			// in those listed already, and an image's own repository is
			// asked first anyway. containerd's own handler skips it too.
			log.G(ctx).Debugf("lazyconv: not recording %s/%s on %s: its %s label is full", src.Host, src.Repository, d, key)
			continue
		}
		update[key] = value
	}
	if err := labels.Set(ctx, cs, d, update); err != nil {
		return fmt.Errorf("recording source %s/%s on %s: %w", src.Host, src.Repository, d, err)
	}
	return nil
}

// SourceOf parses an image reference's registry host (with its port) and repository.
func SourceOf(ref string) (Source, error) {
	name, _, _ := strings.Cut(ref, "@")
	host, rest, ok := strings.Cut(name, "/")
	if !ok || !strings.ContainsAny(host, ".:") && host != "localhost" {
		return Source{}, fmt.Errorf("reference %q names no registry host: %w", ref, errdefs.ErrInvalidArgument)
	}
	repo := rest
	if i := strings.LastIndex(rest, ":"); i >= 0 && !strings.Contains(rest[i:], "/") {
		repo = rest[:i]
	}
	return Source{Host: host, Repository: repo}, nil
}

// hostname is host without its port, as distribution-source labels key it.
func hostname(host string) string {
	if h, _, err := net.SplitHostPort(host); err == nil {
		return h
	}
	return host
}

// labels reports whether s, read from a distribution-source label, names
// the repository ref: the same host with its port, or its host name alone
// as containerd's labels give it.
func (s Source) labels(ref Source) bool {
	return s.Repository == ref.Repository && (s.Host == ref.Host || s.Host == hostname(ref.Host))
}

// Pulled reports whether the blob's distribution-source labels (info)
// say it came from src: its host with the port, or its host name alone as
// containerd's pulls label it.
func Pulled(info content.Info, src Source) bool {
	for _, s := range Sources(info) {
		if s.labels(src) {
			return true
		}
	}
	return false
}

// Repositories lists the repositories an image's manifest came from, to
// look for records published about it: those its distribution-source
// labels (info) name, which containerd's pulls and lazyconv's lazy pull
// write (an imported image has none, whatever its name says). The image's
// own repository (imageRef, when it is one of them) comes first, with the
// port its name gives.
func Repositories(imageRef string, info content.Info) []Source {
	labelled := Sources(info)
	own, err := SourceOf(imageRef)
	if err != nil {
		return labelled
	}
	for i, src := range labelled {
		if src.labels(own) {
			return append([]Source{own}, append(labelled[:i:i], labelled[i+1:]...)...)
		}
	}
	return labelled
}
