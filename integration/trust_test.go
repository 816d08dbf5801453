package integration

import (
	"bytes"
	"encoding/json"
	"fmt"
	"net"
	"net/http"
	"strconv"
	"strings"
	"sync/atomic"
	"testing"

	"github.com/containerd/containerd/v2/core/content"
	"github.com/containerd/containerd/v2/core/images"
	"github.com/containerd/stargz-snapshotter/estargz"
	"github.com/opencontainers/go-digest"
	ocispec "github.com/opencontainers/image-spec/specs-go/v1"
	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"

	"github.com/lazyconv/lazyconv/converter/convertertest"
	"github.com/lazyconv/lazyconv/labels"
)

// publication is a converted manifest of node A's, to doctor and publish.
type publication struct {
	t        *testing.T
	d        *daemon
	manifest ocispec.Manifest
	config   map[string]*json.RawMessage
	rawCfg   []byte            // the config as it is, unless setDiffIDs changed it
	labels   map[string]string // the converted manifest's (converted-from, variant)
}

// conversionOf reads the conversion ref on node d, to doctor.
func conversionOf(t *testing.T, d *daemon, ref string) *publication {
	t.Helper()
	c := d.client(t)
	ctx := nsContext("default")
	img, err := c.ImageService().Get(ctx, ref)
	require.NoError(t, err)
	desc := img.Target
	var m ocispec.Manifest
	b, err := content.ReadBlob(ctx, c.ContentStore(), desc)
	require.NoError(t, err)
	require.NoError(t, json.Unmarshal(b, &m))
	info, err := c.ContentStore().Info(ctx, desc.Digest)
	require.NoError(t, err)
	var cfg map[string]*json.RawMessage
	b, err = content.ReadBlob(ctx, c.ContentStore(), m.Config)
	require.NoError(t, err)
	require.NoError(t, json.Unmarshal(b, &cfg))
	return &publication{t: t, d: d, manifest: m, config: cfg, rawCfg: b, labels: map[string]string{
		labels.ConvertedFrom: info.Labels[labels.ConvertedFrom], labels.ConvertedVariant: info.Labels[labels.ConvertedVariant]}}
}

// setDiffIDs replaces the config's diff_ids, every other byte kept.
func (p *publication) setDiffIDs(diffIDs []digest.Digest) {
	b, err := json.Marshal(ocispec.RootFS{Type: "layers", DiffIDs: diffIDs})
	require.NoError(p.t, err)
	p.config["rootfs"] = (*json.RawMessage)(&b)
	p.rawCfg = nil
}

func (p *publication) diffIDs() []digest.Digest {
	var rootfs ocispec.RootFS
	require.NoError(p.t, json.Unmarshal(*p.config["rootfs"], &rootfs))
	return rootfs.DiffIDs
}

// put writes a blob into node A's store.
func (p *publication) put(b []byte, mediaType string, lbls map[string]string) ocispec.Descriptor {
	c := p.d.client(p.t)
	desc := ocispec.Descriptor{MediaType: mediaType, Digest: digest.FromBytes(b), Size: int64(len(b))}
	require.NoError(p.t, content.WriteBlob(nsContext("default"), c.ContentStore(), "doctor-"+desc.Digest.String(), bytes.NewReader(b), desc, content.WithLabels(lbls)))
	return desc
}

// publish stores the doctored manifest as image name on node A, labelled as
// a conversion of the source, and pushes it to ref, which publishes it as a
// referrer of the source manifest.
func (p *publication) publish(name, ref string) {
	if p.rawCfg == nil {
		cfg, err := json.Marshal(p.config)
		require.NoError(p.t, err)
		p.manifest.Config = p.put(cfg, p.manifest.Config.MediaType, nil)
	}
	lbls := map[string]string{"containerd.io/gc.ref.content.config": p.manifest.Config.Digest.String()}
	for i, l := range p.manifest.Layers {
		lbls["containerd.io/gc.ref.content.l."+strconv.Itoa(i)] = l.Digest.String()
	}
	for k, v := range p.labels {
		lbls[k] = v
	}
	m, err := json.Marshal(p.manifest)
	require.NoError(p.t, err)
	desc := p.put(m, ocispec.MediaTypeImageManifest, lbls)
	c := p.d.client(p.t)
	// The doctored manifest may be one the node has (the impostor's own
	// conversion, whose config is the source's but for its diff_ids): label
	// it as the attacker would.
	var fields []string
	for k := range lbls {
		fields = append(fields, "labels."+k)
	}
	_, err = c.ContentStore().Update(nsContext("default"), content.Info{Digest: desc.Digest, Labels: lbls}, fields...)
	require.NoError(p.t, err)
	_, err = c.ImageService().Create(nsContext("default"), images.Image{Name: name, Target: desc})
	require.NoError(p.t, err)
	out := mustLazyconv(p.t, "--address", p.d.address, "image", "push", "--plain-http", ref, name)
	require.Contains(p.t, out, "published conversion", "the doctored conversion is published:\n%s", out)
}

// Conversions published by someone with push rights to the source's
// repository, each doctored in one way a lazy snapshotter or containerd
// would not notice, are refused by a node in its default configuration:
// it says why and converts here, to the honest digest.
func TestFleetRefusesDoctoredPublications(t *testing.T) {
	requireRoot(t)
	// The registry takes layer URLs on loopback, as one configured for
	// foreign layers would take them anywhere.
	reg := startRegistryWith(t, "", "validation:\n  manifests:\n    urls:\n      allow:\n        - '^http://127\\.0\\.0\\.1:'\n")
	a := startDaemon(t, bins.containerdLazyconv, testConfig)
	src := reg.host + "/fleet/app:v1"
	pushSource(t, a, src)
	lcA := func(args ...string) string {
		return mustLazyconv(t, append([]string{"--address", a.address}, args...)...)
	}
	lcA("image", "pull", "--lazy", "--plain-http", src)
	honest := map[string]string{}
	for _, format := range []string{"estargz", "zstdchunked", "uncompress"} {
		honest[format] = convertedDigest(t, lcA("image", "convert", "--"+format, "--oci", "--plain-http", src, src+"-"+format))
	}
	impostor := reg.host + "/fleet/impostor:v1"
	img := newTestImage(t, impostor, 64<<10) // other files
	lcA("image", "import", img.archive)
	lcA("image", "convert", "--estargz", "--oci", impostor, impostor+"-estargz")

	// A listener standing for any address a descriptor's urls could name.
	var urlRequests atomic.Int64
	l, err := net.Listen("tcp", "127.0.0.1:0")
	require.NoError(t, err)
	srv := &http.Server{Handler: http.HandlerFunc(func(w http.ResponseWriter, _ *http.Request) {
		urlRequests.Add(1)
		http.NotFound(w, nil)
	})}
	go srv.Serve(l) //nolint:errcheck // closed below
	t.Cleanup(func() { srv.Close() })

	for i, tc := range []struct {
		name, format string
		doctor       func(p *publication)
		want         string
	}{
		{"eStargz layers of another image", "estargz", func(p *publication) {
			other := conversionOf(t, a, impostor+"-estargz")
			p.manifest.Layers = other.manifest.Layers
			p.setDiffIDs(other.diffIDs())
		}, "not the source's"},
		{"zstd:chunked TOC with a setuid file", "zstdchunked", func(p *publication) {
			c := a.client(t)
			ctx := nsContext("default")
			layer := p.manifest.Layers[0]
			blob, err := content.ReadBlob(ctx, c.ContentStore(), layer)
			require.NoError(t, err)
			doctored, annotations, err := convertertest.DoctorZstdTOC(blob, layer.Annotations[labels.UncompressedSizeAnnotation], func(toc *estargz.JTOC) {
				for _, e := range toc.Entries {
					if e.Name == "bin/tool" {
						e.Mode |= 0o4000
					}
				}
			})
			require.NoError(t, err)
			d := p.put(doctored, layer.MediaType, nil)
			d.Annotations = annotations
			p.manifest.Layers[0] = d
		}, "is not the payload's"},
		// (gzip has no CLI flag; uncompress is the same kind of recompression)
		{"a recompressed layer said not lossless", "uncompress", func(p *publication) {
			p.manifest.Layers[1].Annotations = map[string]string{labels.NotLosslessAnnotation: "sparse files written as regular files: data/text"}
		}, "is not lossless"},
		{"urls to fetch a layer from", "estargz", func(p *publication) {
			p.manifest.Layers[0].URLs = []string{"http://" + l.Addr().String() + "/layer"}
		}, "lists URLs"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			p := conversionOf(t, a, src+"-"+tc.format)
			tc.doctor(p)
			p.publish(fmt.Sprintf("attack-%d", i), fmt.Sprintf("%s/fleet/app:attack-%d", reg.host, i))

			b := startDaemon(t, bins.containerdLazyconv, testConfig)
			mustLazyconv(t, "--address", b.address, "image", "pull", "--lazy", "--plain-http", src)
			_, offset := reg.logSince(t, 0)
			out, err := lazyconv(t, "--address", b.address, "image", "convert", "--"+tc.format, "--oci", "--plain-http", src, src+"-"+tc.format)
			require.NoError(t, err, out)
			if t.Failed() {
				log, _ := reg.logSince(t, offset)
				t.Logf("registry:\n%s", log)
			}
			assert.Equal(t, honest[tc.format], convertedDigest(t, out), "converted here, to the honest digest:\n%s", out)
			assert.Contains(t, out, "is not used")
			assert.Contains(t, out, tc.want)
			assert.NotContains(t, out, "adopted from")
		})
	}
	assert.Zero(t, urlRequests.Load(), "nothing asked the address the urls named")
}

// A node asks only the repository of the name it converts (and trusted
// ones): a conversion published in another repository that holds the same
// manifest is never looked at. Distribution sources keep their ports: a
// local name's layers are fetched, and a trusted repository's conversion is
// found, through the labels of a registry on a port of its own.
func TestFleetAsksOnlyTheConvertedRepository(t *testing.T) {
	requireRoot(t)
	reg := startRegistry(t)
	require.NotContains(t, []string{"80", "443"}, reg.host[strings.LastIndex(reg.host, ":")+1:], "the registry is on a port of its own")
	a := startDaemon(t, bins.containerdLazyconv, testConfig)
	src, other := reg.host+"/fleet/app:v1", reg.host+"/other/app:v1"
	pushSource(t, a, src)
	mustLazyconv(t, "--address", a.address, "image", "pull", "--lazy", "--plain-http", src)
	honest := convertedDigest(t, mustLazyconv(t, "--address", a.address, "image", "convert", "--estargz", "--oci", "--plain-http", src, src+"-esgz"))
	// The same manifest in other/app, with a conversion published there.
	mustLazyconv(t, "--address", a.address, "image", "push", "--plain-http", other, src)
	mustLazyconv(t, "--address", a.address, "image", "push", "--plain-http", reg.host+"/other/app:esgz", src+"-esgz")

	b := startDaemon(t, bins.containerdLazyconv, testConfig)
	lcB := func(args ...string) string {
		return mustLazyconv(t, append([]string{"--address", b.address}, args...)...)
	}
	lcB("image", "pull", "--lazy", "--plain-http", other)
	lcB("image", "pull", "--lazy", "--plain-http", src) // the manifest is known in both repositories
	_, offset := reg.logSince(t, 0)
	out := lcB("image", "convert", "--estargz", "--oci", "--plain-http", src, src+"-esgz")
	assert.Equal(t, honest, convertedDigest(t, out))
	assert.Contains(t, out, "committed", "converted here:\n%s", out)
	assert.NotContains(t, out, "adopted from")
	log, _ := reg.logSince(t, offset)
	assert.NotContains(t, log, "/v2/other/app/referrers", "other/app was not asked")
	assert.NotContains(t, log, "/v2/other/app/manifests/sha256-", "other/app's referrers tag was not read")

	// A local name: nothing to ask but trusted repositories; layers come from
	// the labelled sources, with their port.
	c := startDaemon(t, bins.containerdLazyconv, trustingConfig(reg.host+"/other/**"))
	lcC := func(args ...string) string {
		return mustLazyconv(t, append([]string{"--address", c.address}, args...)...)
	}
	lcC("image", "pull", "--lazy", "--plain-http", other)
	cc := c.client(t)
	ctx := nsContext("default")
	img, err := cc.ImageService().Get(ctx, other)
	require.NoError(t, err)
	_, err = cc.ImageService().Create(ctx, images.Image{Name: "app:local", Target: img.Target})
	require.NoError(t, err)
	out = lcC("image", "convert", "--estargz", "--oci", "--plain-http", "app:local", "app:local-esgz")
	assert.Equal(t, honest, convertedDigest(t, out))
	assert.Contains(t, out, "adopted from "+reg.host+"/other/app@", "found in the trusted repository through its labelled port:\n%s", out)
	verified := lcC("image", "verify", "app:local-esgz")
	assert.Contains(t, verified, "3 lazy-pull layers verified", "fetched from the labelled source, with its port")

	// Untrusted, the same local name converts here from the labelled sources.
	d := startDaemon(t, bins.containerdLazyconv, testConfig)
	mustLazyconv(t, "--address", d.address, "image", "pull", "--lazy", "--plain-http", other)
	dc := d.client(t)
	img, err = dc.ImageService().Get(ctx, other)
	require.NoError(t, err)
	_, err = dc.ImageService().Create(ctx, images.Image{Name: "app:local", Target: img.Target})
	require.NoError(t, err)
	out = mustLazyconv(t, "--address", d.address, "image", "convert", "--estargz", "--oci", "--plain-http", "app:local", "app:local-esgz")
	assert.Equal(t, honest, convertedDigest(t, out))
	assert.Contains(t, out, "from registry", "layers fetched from the labelled source:\n%s", out)
}
