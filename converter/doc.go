// Package converter is lazyconv's conversion core: it walks an image, runs
// each layer through a format's LayerConverter with caching, de-duplication,
// bounded workers and leases, and writes the new manifests, configs and index.
// It knows no byte format; formats live in their own packages
// (converter/stargz, converter/nydus, converter/recompress) and pass the
// conformance suite in converter/convertertest.
//
// How a conversion flows:
//
//  1. ConvertImage takes (or creates) a lease and walks the image from its
//     target: indexes are filtered by platform, each manifest is converted
//     once however often an index lists it.
//  2. For each layer of a manifest, the ImageOptions' LayerPlan picks a
//     LayerConverter (or none). EnsureLayer may make a missing blob local
//     first (remote content). The layers run concurrently.
//  3. ConvertLayer answers from the variant cache when it can: a
//     "containerd.io/gc.ref.content.lazyconv.<variant>" label on the source
//     names the converted blob. Otherwise one conversion per (namespace,
//     source, variant) runs at a time (internal/flight); callers asking for
//     the same one wait for it. The work waits for one of the Converter's
//     workers and runs under a lease of its own, so that a crash leaves
//     nothing that outlives it; each waiting caller adds the result to its own
//     lease, and the work's lease is dropped after the last of them.
//  4. The LayerConverter keeps a layer already in its format, or writes the
//     new blob. Progress records each layer's state and bytes.
//  5. Manifests and configs are rewritten with the new layers and diff_ids
//     (through containerd's converter helpers; a diffID no label caches is
//     computed once through DiffPairs), Docker types become OCI ones when
//     asked, and an AppendLayer step may add a layer (nydus's bootstrap).
//  6. Once the image is stored, Link writes the variant labels (source to
//     variant, and the back-reference) and what was learnt about sources, so
//     the next conversion of any image sharing a layer is a label lookup.
package converter
