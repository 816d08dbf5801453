//go:build cgo

package main

import (
	"context"
	"encoding/json"
	"fmt"
	"os"
	"path/filepath"
	"runtime"
	"sync"
	"time"

	sociapi "github.com/awslabs/soci-snapshotter/soci"
	"github.com/containerd/containerd/v2/core/content"
	"github.com/containerd/containerd/v2/core/images"
	"github.com/containerd/platforms"
	"github.com/klauspost/compress/gzip"
	ocispec "github.com/opencontainers/image-spec/specs-go/v1"

	"github.com/lazyconv/lazyconv/converter"
	"github.com/lazyconv/lazyconv/converter/soci"
	"github.com/lazyconv/lazyconv/internal/socistore"
)

// sociSection converts each workload to a SOCI-enabled image with lazyconv
// (format soci) and with soci-snapshotter's own builder (IndexBuilder.Convert,
// what `soci convert` runs, in-process over the same kind of store), each in
// a child process of its own, beside lazyconv's default eStargz and the limit
// of decompressing every layer once on all cores, and prints times, ratios,
// the bytes each adds (zTOCs and indexes) and peak RSS.
func sociSection(work string, loads []workload, runs int) error {
	fmt.Printf("\nSOCI (span 4 MiB, min layer 10 MiB)  %9s %9s %7s %13s %13s %9s %9s %10s %9s %9s\n",
		"lazyconv", "soci", "ratio", "added ours", "added soci", "RSS ours", "RSS soci", "eStargz", "× limit", "verify")
	for _, w := range loads {
		ours, err := measure(work, "ours", "soci", w, runs)
		if err != nil {
			return err
		}
		peer, err := measure(work, "peer", "soci", w, runs)
		if err != nil {
			return err
		}
		esgz, err := measure(work, "ours", "estargz", w, runs)
		if err != nil {
			return err
		}
		check, err := measure(work, "verify", "soci", w, runs)
		if err != nil {
			return err
		}
		var limits []float64
		for range runs {
			t, err := decompressOnce(w.layers)
			if err != nil {
				return err
			}
			limits = append(limits, t.Seconds())
		}
		fmt.Printf("%-36s %8.2fs %8.2fs %6.2fx %10.2f MB %10.2f MB %6.0f MB %6.0f MB %9.2fs %8.2fx %8.2fs\n", w.name,
			ours.seconds, peer.seconds, peer.seconds/ours.seconds, ours.size/1e6, peer.size/1e6, ours.rssMB, peer.rssMB,
			esgz.seconds, ours.seconds/median(limits), check.seconds)
	}
	return nil
}

// decompressOnce is the limit of a SOCI conversion: every layer decompressed
// once, the layers on all cores.
func decompressOnce(layers []generated) (time.Duration, error) {
	start := time.Now()
	var (
		wg    sync.WaitGroup
		mu    sync.Mutex
		first error
		slots = make(chan struct{}, runtime.GOMAXPROCS(0))
	)
	for _, l := range layers {
		wg.Add(1)
		go func() {
			defer wg.Done()
			slots <- struct{}{}
			defer func() { <-slots }()
			f, err := os.Open(l.Path)
			if err == nil {
				defer f.Close()
				var zr *gzip.Reader
				if zr, err = gzip.NewReader(f); err == nil {
					_, err = zr.WriteTo(discard{})
				}
			}
			if err != nil {
				mu.Lock()
				first = err
				mu.Unlock()
			}
		}()
	}
	wg.Wait()
	return time.Since(start), first
}

type discard struct{}

func (discard) Write(p []byte) (int, error) { return len(p), nil }

// resultOut is where a child prints its result: standard output as the
// process started, before soci's builder is silenced.
var resultOut = os.Stdout

// sociChild converts the layers once to a SOCI-enabled image, as lazyconv
// (side "ours") or soci-snapshotter's builder ("peer"), on a fresh store, and
// prints a childResult whose size is the bytes added: zTOCs, SOCI index.
func sociChild(side, spec string, layers []generated) error {
	ctx, st, ref, dir, cleanup, err := childStore(spec, layers)
	if err != nil {
		return err
	}
	defer cleanup()
	stopProfile, err := startProfile()
	if err != nil {
		return err
	}
	start := time.Now()
	var target ocispec.Descriptor
	if side == "ours" || side == "verify" {
		conv, err := converter.New(st.ContentStore(), st.LeaseManager())
		if err != nil {
			return err
		}
		o := soci.DefaultOptions()
		res, err := conv.ConvertImage(converter.WithScratchDir(ctx, dir), st.ImageStore(), ref, "bench:soci", converter.ImageOptions{
			DockerToOCI: true, Platforms: platforms.All, Manifests: soci.Manifests(o),
			Finish: func(ctx context.Context, cs content.Store, t ocispec.Descriptor) (ocispec.Descriptor, error) {
				return soci.Bind(ctx, cs, t, o)
			}})
		if err != nil {
			return err
		}
		target = res.Image.Target
		if side == "verify" { // what a node adopting it from the registry spends checking it
			start = time.Now()
			if err := verifyAll(ctx, st.ContentStore(), target); err != nil {
				return err
			}
		}
	} else {
		src, err := st.ImageStore().Get(ctx, ref)
		if err != nil {
			return err
		}
		root := filepath.Join(dir, "soci")
		if err := os.MkdirAll(root, 0o700); err != nil {
			return err
		}
		db, err := sociapi.NewDB(sociapi.ArtifactsDbPath(root))
		if err != nil {
			return err
		}
		bs := socistore.New(st.ContentStore(), st.LeaseManager())
		b, err := sociapi.NewIndexBuilder(st.ContentStore(), bs, sociapi.WithArtifactsDb(db), sociapi.WithForceRecreateZtocs(true))
		if err != nil {
			return err
		}
		bctx, cleanup, err := bs.BatchOpen(ctx)
		if err != nil {
			return err
		}
		defer cleanup(ctx)                 //nolint:errcheck
		os.Stdout, _ = os.Open(os.DevNull) // soci's builder prints a line per layer
		desc, err := b.Convert(bctx, src, sociapi.ConvertWithNoGarbageCollectionLabels())
		if err != nil {
			return err
		}
		target = *desc
	}
	r := childResult{Seconds: time.Since(start).Seconds()}
	stopProfile()
	if r.Size, err = sociAdded(ctx, st.ContentStore(), target); err != nil {
		return err
	}
	r.PeakMB = selfPeakMB()
	return json.NewEncoder(resultOut).Encode(r)
}

// verifyAll checks every zTOC of a SOCI-enabled image against its layer.
func verifyAll(ctx context.Context, cs content.Store, target ocispec.Descriptor) error {
	var idx ocispec.Index
	if _, err := converter.ReadDocument(ctx, cs, &idx, target); err != nil {
		return err
	}
	v := soci.Verifier()
	for _, d := range idx.Manifests {
		var m ocispec.Manifest
		if _, err := converter.ReadDocument(ctx, cs, &m, d); err != nil {
			return err
		}
		if !v.Claims(m) {
			continue
		}
		diffIDs, err := images.RootFS(ctx, cs, m.Config)
		if err != nil {
			return err
		}
		checks, err := v.VerifyManifest(ctx, cs, m, diffIDs, func(context.Context, ocispec.Descriptor) error { return nil })
		if err != nil {
			return err
		}
		for _, c := range checks {
			if c.Err != nil {
				return c.Err
			}
		}
	}
	return nil
}

// sociAdded is the bytes a SOCI-enabled image adds: its SOCI indexes and
// their zTOCs.
func sociAdded(ctx context.Context, cs content.Store, target ocispec.Descriptor) (int64, error) {
	var idx ocispec.Index
	b, err := content.ReadBlob(ctx, cs, target)
	if err == nil {
		err = json.Unmarshal(b, &idx)
	}
	if err != nil {
		return 0, err
	}
	var n int64
	for _, d := range idx.Manifests {
		if d.ArtifactType != sociapi.SociIndexArtifactTypeV2 {
			continue
		}
		var m ocispec.Manifest
		mb, err := content.ReadBlob(ctx, cs, d)
		if err == nil {
			err = json.Unmarshal(mb, &m)
		}
		if err != nil {
			return 0, err
		}
		n += d.Size
		for _, z := range m.Layers {
			n += z.Size
		}
	}
	return n, nil
}
