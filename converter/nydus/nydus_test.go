package nydus_test

import (
	"io"
	"os"
	"os/exec"
	"path/filepath"
	"testing"

	"github.com/containerd/errdefs"
	nydusconv "github.com/containerd/nydus-snapshotter/pkg/converter"
	ocispec "github.com/opencontainers/image-spec/specs-go/v1"
	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"

	"github.com/lazyconv/lazyconv/converter"
	"github.com/lazyconv/lazyconv/converter/convertertest"
	"github.com/lazyconv/lazyconv/converter/nydus"
	"github.com/lazyconv/lazyconv/labels"
)

func TestNydusWithoutBuilderIsUnavailableBeforeAnyWork(t *testing.T) {
	missing := filepath.Join(t.TempDir(), "nydus-image")
	b := nydus.Probe(t.Context(), missing)
	assert.False(t, b.Found)
	assert.Contains(t, b.Reason, missing)

	o := nydus.DefaultOptions()
	o.BuilderPath = missing
	for _, tc := range []struct {
		name string
		make func() error
	}{
		{"layer converter", func() error { _, err := nydus.New(o); return err }},
		{"merge hook", func() error { _, err := nydus.MergeHook(o); return err }},
		{"available", func() error { _, err := o.Available(t.Context()); return err }},
	} {
		t.Run(tc.name, func(t *testing.T) {
			err := tc.make()
			require.Error(t, err)
			assert.True(t, errdefs.IsUnavailable(err), "%v", err)
			assert.Contains(t, err.Error(), "nydus-image")
		})
	}
}

// fakeBuilder is a script that answers --version as nydus-image does: enough
// for the probe and option checks, not for packing.
func fakeBuilder(t *testing.T) string {
	path := filepath.Join(t.TempDir(), "nydus-image")
	require.NoError(t, os.WriteFile(path, []byte("#!/bin/sh\necho 'Version: v2.3.0-fake'\necho 'Git Commit: 0'\n"), 0o755))
	return path
}

func TestProbeRunsOncePerPath(t *testing.T) {
	path := fakeBuilder(t)
	b := nydus.Probe(t.Context(), path)
	require.True(t, b.Found, b.Reason)
	assert.Equal(t, "Version: v2.3.0-fake", b.Version)
	require.NoError(t, os.Remove(path))
	again := nydus.Probe(t.Context(), path)
	assert.Equal(t, b, again, "the first answer is kept: the builder is asked once")
}

func TestNydusOptionsAndVariants(t *testing.T) {
	builder := fakeBuilder(t)
	for _, tc := range []struct {
		opts nydus.Options
		want string
	}{
		{nydus.Options{}, "nydus"},
		{nydus.Options{FsVersion: "5", Compressor: "none"}, "nydus.compressor-none.fs-5"},
		{nydus.Options{Compressor: "lz4_block", WorkDir: "/elsewhere"}, "nydus.compressor-lz4_block"},
	} {
		o := nydus.DefaultOptions()
		o.BuilderPath = builder
		if tc.opts.FsVersion != "" {
			o.FsVersion = tc.opts.FsVersion
		}
		if tc.opts.Compressor != "" {
			o.Compressor = tc.opts.Compressor
		}
		o.WorkDir = tc.opts.WorkDir
		c, err := nydus.New(o)
		require.NoError(t, err)
		assert.Equal(t, tc.want, c.Variant())
		assert.Equal(t, nydusconv.MediaTypeNydusBlob, c.MediaType(ocispec.MediaTypeImageLayerGzip))
	}
}

func TestNydusConformance(t *testing.T) {
	defaults := nydus.DefaultOptions()
	defaults.BuilderPath = fakeBuilder(t)
	skip := ""
	if path, err := exec.LookPath(nydus.BuilderName); err == nil {
		defaults.BuilderPath = path
	} else {
		skip = "no nydus-image on PATH (no Debian package ships it): nydus packing is not exercised here"
	}
	convertertest.Run(t, convertertest.Format[nydus.Options]{
		Name: "nydus", Defaults: defaults, New: nydus.New, OCIOnly: true, SkipConversion: skip,
		Alternatives: map[string]any{"FsVersion": "5", "Compressor": "none", "PrefetchPatterns": "/usr/bin/app\n/etc/app.conf"},
		Invalid: []nydus.Options{
			{BuilderPath: defaults.BuilderPath, FsVersion: "7", Compressor: "zstd"},
			{BuilderPath: defaults.BuilderPath, FsVersion: "6", Compressor: "brotli"},
		},
	})
}

// TestNydusEndToEnd packs and merges with the real builder.
func TestNydusEndToEnd(t *testing.T) {
	path, err := exec.LookPath(nydus.BuilderName)
	if err != nil {
		t.Skip("no nydus-image on PATH (no Debian package ships it): nydus packing and merging are not exercised here")
	}
	f := convertertest.NewFixture(t)
	f.TestImage(t, "example.com/app:v1", false)
	opts := nydus.DefaultOptions()
	opts.BuilderPath, opts.WorkDir = path, t.TempDir()
	lc, err := nydus.New(opts)
	require.NoError(t, err)
	hook, err := nydus.MergeHook(opts)
	require.NoError(t, err)
	res, err := f.Conv.ConvertImage(f.Ctx, f.Store.ImageStore(), "example.com/app:v1", "example.com/app:nydus",
		converter.ImageOptions{Layers: converter.Every(lc), AppendLayer: hook, DockerToOCI: true})
	require.NoError(t, err)
	m := convertertest.ReadJSON[ocispec.Manifest](t, f, res.Image.Target)
	require.Len(t, m.Layers, 4)
	for _, l := range m.Layers[:3] {
		assert.Equal(t, nydusconv.MediaTypeNydusBlob, l.MediaType)
	}
	boot := m.Layers[3]
	assert.Equal(t, "true", boot.Annotations[nydusconv.LayerAnnotationNydusBootstrap])
	info, err := f.CS.Info(f.Ctx, boot.Digest)
	require.NoError(t, err)
	assert.NotEmpty(t, info.Labels[labels.Uncompressed])
	ra, err := f.CS.ReaderAt(f.Ctx, boot)
	require.NoError(t, err)
	defer ra.Close()
	_, err = io.Copy(io.Discard, io.NewSectionReader(ra, 0, ra.Size()))
	require.NoError(t, err)
}
