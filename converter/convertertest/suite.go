// Package convertertest is the conformance suite every LayerConverter runs,
// in the style of containerd's core/content/testsuite and estargz's
// CompressionTestSuite: a format's test calls Run with its constructor, its
// defaults and a table of other values for its options, and the suite checks
// the contract of converter.LayerConverter on a real store (containerd's bolt
// metadata over a local content store):
//
//   - Variant is stable, and changes with every option that changes the
//     output: an option field the table gives no other value for fails, so a
//     new option cannot be forgotten in the variant key;
//   - invalid options are refused with ErrInvalidArgument;
//   - conversion advances the progress counters, and the output's media type
//     keeps its source's Docker/OCI family (zstd and OCI-only formats aside);
//   - converting an output again keeps it;
//   - bad input is ErrInvalidArgument and leaves no ingest and no blob.
package convertertest

import (
	"archive/tar"
	"bytes"
	"context"
	"reflect"
	"sync/atomic"
	"testing"
	"time"

	"github.com/containerd/containerd/v2/core/content"
	"github.com/containerd/containerd/v2/core/images"
	"github.com/containerd/containerd/v2/core/leases"
	"github.com/containerd/errdefs"
	"github.com/opencontainers/go-digest"
	ocispec "github.com/opencontainers/image-spec/specs-go/v1"
	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"

	"github.com/lazyconv/lazyconv/converter"
	"github.com/lazyconv/lazyconv/converter/options"
	"github.com/lazyconv/lazyconv/internal/imagegen"
)

// Format describes a format to the suite.
type Format[O any] struct {
	// Name starts every variant key of the format.
	Name string
	// Defaults are the format's default options.
	Defaults O
	// DefaultVariant is the variant key of Defaults when it is not Name
	// (a build whose defaults write other bytes than the format's baseline).
	DefaultVariant string
	// New builds the format's converter from options.
	New func(O) (converter.LayerConverter, error)
	// Alternatives holds, for every option field (by Go field name) whose
	// variant tag is not "-", a valid value other than its default.
	Alternatives map[string]any
	// Fixed names option fields that have no valid value but their default
	// for this format (an uncompressed layer's level), with the reason.
	Fixed map[string]string
	// Invalid lists options New must refuse with ErrInvalidArgument.
	Invalid []O
	// SkipConversion, if set, says why conversions cannot run here (the
	// option checks still run).
	SkipConversion string
	// OCIOnly: the format's media types are OCI whatever the source's family.
	OCIOnly bool
}

// Run runs the suite.
func Run[O any](t *testing.T, f Format[O]) {
	t.Run("VariantIsStable", func(t *testing.T) { testVariantStable(t, f) })
	t.Run("EveryOptionIsInTheVariant", func(t *testing.T) { testEveryOption(t, f) })
	t.Run("InvalidOptionsAreRefused", func(t *testing.T) { testInvalid(t, f) })
	t.Run("Conversion", func(t *testing.T) {
		if f.SkipConversion != "" {
			t.Skip(f.SkipConversion)
		}
		lc, err := f.New(f.Defaults)
		require.NoError(t, err)
		t.Run("CountsAndKeepsTheFamily", func(t *testing.T) { testConvert(t, f, lc) })
		t.Run("BadInputChangesNothing", func(t *testing.T) { testBadInput(t, lc) })
	})
}

func testVariantStable[O any](t *testing.T, f Format[O]) {
	a, err := f.New(f.Defaults)
	require.NoError(t, err)
	b, err := f.New(f.Defaults)
	require.NoError(t, err)
	assert.Equal(t, a.Variant(), b.Variant())
	want := f.Name
	if f.DefaultVariant != "" {
		want = f.DefaultVariant
	}
	assert.Equal(t, want, a.Variant(), "the default options qualify nothing but the build's")
}

func testEveryOption[O any](t *testing.T, f Format[O]) {
	require.NoError(t, options.Check(f.Defaults), "every option field needs a variant tag")
	base, err := f.New(f.Defaults)
	require.NoError(t, err)
	seen := map[string]string{base.Variant(): "the defaults"}
	typ := reflect.TypeOf(f.Defaults)
	listed := map[string]bool{}
	for _, sf := range reflect.VisibleFields(typ) {
		if !sf.IsExported() || (sf.Anonymous && sf.Type.Kind() == reflect.Struct) {
			continue
		}
		if sf.Tag.Get("variant") == "-" {
			continue
		}
		listed[sf.Name] = true
		if why, fixed := f.Fixed[sf.Name]; fixed {
			t.Logf("option %s has no other valid value: %s", sf.Name, why)
			continue
		}
		alt, ok := f.Alternatives[sf.Name]
		if !ok {
			t.Errorf("option %s changes the output but the suite's table has no other value for it: add one to Alternatives", sf.Name)
			continue
		}
		opts := f.Defaults
		v := reflect.ValueOf(&opts).Elem().FieldByIndex(sf.Index)
		v.Set(reflect.ValueOf(alt))
		lc, err := f.New(opts)
		if !assert.NoError(t, err, "option %s = %v", sf.Name, alt) {
			continue
		}
		if prev, dup := seen[lc.Variant()]; dup {
			t.Errorf("option %s = %v gives variant %q, as %s does: the cache would mix their blobs", sf.Name, alt, lc.Variant(), prev)
		}
		seen[lc.Variant()] = sf.Name
	}
	for name := range f.Alternatives {
		assert.True(t, listed[name], "Alternatives names %s, which is no option changing the output", name)
	}
}

func testInvalid[O any](t *testing.T, f Format[O]) {
	for i, o := range f.Invalid {
		_, err := f.New(o)
		if assert.Error(t, err, "invalid options #%d: %+v", i, o) {
			assert.True(t, errdefs.IsInvalidArgument(err), "invalid options #%d: %v", i, err)
		}
	}
}

// store is a fixture whose context holds a lease, as a Converter's would.
type store struct {
	*Fixture
	ctx context.Context
}

func newStore(t *testing.T) store {
	f := NewFixture(t)
	l, err := f.Store.LeaseManager().Create(f.Ctx, leases.WithRandomID(), leases.WithExpiration(time.Hour))
	require.NoError(t, err)
	return store{Fixture: f, ctx: leases.WithLease(f.Ctx, l.ID)}
}

func (s store) put(t *testing.T, blob []byte, mediaType string) ocispec.Descriptor {
	desc := ocispec.Descriptor{MediaType: mediaType, Digest: digest.FromBytes(blob), Size: int64(len(blob))}
	require.NoError(t, content.WriteBlob(s.ctx, s.CS, "conformance-"+desc.Digest.String(), bytes.NewReader(blob), desc))
	return desc
}

var epoch = time.Date(2024, 1, 2, 3, 4, 5, 0, time.UTC)

// Layer is a small tar with a directory, files, a symlink and a hard link.
func Layer() []byte {
	big := bytes.Repeat([]byte("lazyconv conformance "), 50000)
	return imagegen.TarBytes([]imagegen.Entry{
		{Header: tar.Header{Name: "etc/", Typeflag: tar.TypeDir, Mode: 0o755, ModTime: epoch}},
		{Header: tar.Header{Name: "etc/hostname", Typeflag: tar.TypeReg, Mode: 0o644, ModTime: epoch}, Body: []byte("conformance\n")},
		{Header: tar.Header{Name: "bin/", Typeflag: tar.TypeDir, Mode: 0o755, ModTime: epoch}},
		{Header: tar.Header{Name: "bin/big", Typeflag: tar.TypeReg, Mode: 0o755, ModTime: epoch}, Body: big},
		{Header: tar.Header{Name: "bin/link", Typeflag: tar.TypeSymlink, Linkname: "big", ModTime: epoch}},
		{Header: tar.Header{Name: "bin/hard", Typeflag: tar.TypeLink, Linkname: "bin/big", ModTime: epoch}},
	})
}

func testConvert[O any](t *testing.T, f Format[O], lc converter.LayerConverter) {
	s := newStore(t)
	tarball := Layer()
	for _, src := range []struct{ mediaType, compression string }{
		{images.MediaTypeDockerSchema2LayerGzip, "gzip"},
		{images.MediaTypeDockerSchema2Layer, ""},
		{ocispec.MediaTypeImageLayerGzip, "gzip"},
		{ocispec.MediaTypeImageLayerZstd, "zstd"},
		{ocispec.MediaTypeImageLayer, ""},
	} {
		t.Run(src.mediaType, func(t *testing.T) {
			desc := s.put(t, imagegen.Compress(tarball, src.compression), src.mediaType)
			var in, out atomic.Int64
			res, err := lc.Convert(s.ctx, s.CS, desc, converter.Counters{In: &in, Out: &out})
			require.NoError(t, err)
			assert.Positive(t, in.Load(), "bytes read are counted")
			assert.Equal(t, res.Desc.Size, out.Load(), "bytes written are counted")
			assert.NotEmpty(t, res.DiffID)
			info, err := s.CS.Info(s.ctx, res.Desc.Digest)
			require.NoError(t, err, "the output is committed")
			assert.Equal(t, res.Desc.Size, info.Size)

			mt := res.Desc.MediaType
			assert.Equal(t, lc.MediaType(src.mediaType), mt, "MediaType tells what Convert writes")
			comp, compErr := converter.LayerCompression(mt)
			switch {
			case f.OCIOnly, compErr == nil && comp == converter.Zstd: // Docker has no such type
				assert.False(t, images.IsDockerType(mt), "%s from %s", mt, src.mediaType)
			default:
				assert.Equal(t, images.IsDockerType(src.mediaType), images.IsDockerType(mt), "%s from %s keeps its family", mt, src.mediaType)
			}

			keep, _, err := lc.Keep(s.ctx, s.CS, res.Desc)
			require.NoError(t, err)
			if assert.NotNil(t, keep, "converting an output again keeps it") {
				assert.Equal(t, res.Desc.Digest, keep.Digest)
			}
		})
	}
}

func testBadInput(t *testing.T, lc converter.LayerConverter) {
	s := newStore(t)
	tarball := Layer()
	gz := imagegen.Compress(tarball, "gzip")
	for _, tc := range []struct {
		name      string
		blob      []byte
		mediaType string
	}{
		{"truncated gzip", gz[:len(gz)/2], ocispec.MediaTypeImageLayerGzip},
		{"corrupt gzip", append(append([]byte{}, gz[:20]...), bytes.Repeat([]byte{0xff}, 4096)...), ocispec.MediaTypeImageLayerGzip},
		{"plain data under a gzip type", tarball, ocispec.MediaTypeImageLayerGzip},
		{"gzip data under a zstd type", gz, ocispec.MediaTypeImageLayerZstd},
		{"not a layer type", gz, ocispec.MediaTypeImageConfig},
	} {
		t.Run(tc.name, func(t *testing.T) {
			desc := s.put(t, tc.blob, tc.mediaType)
			before := s.ContentState(t)
			_, err := lc.Convert(s.ctx, s.CS, desc, converter.Counters{})
			require.Error(t, err)
			assert.True(t, errdefs.IsInvalidArgument(err), "%v", err)
			assert.Equal(t, before, s.ContentState(t), "no ingest and no blob are left")
		})
	}
}
