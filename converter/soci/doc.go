// Package soci is the soci format: SOCI-enabled images (SOCI index
// manifest v2, as soci-snapshotter v0.10+ reads them). Layers are never
// rewritten: each gzip layer of at least the minimum size gets a zTOC, a
// small blob beside it, built in one zlib pass over the layer
// (checkpointer, tarTable) to the bytes soci-snapshotter v0.16.1's own
// builder writes, stored under the caller's lease and linked from the layer
// blob by a variant label (one layer shared by many images is indexed once,
// and garbage collection keeps the zTOC exactly as long as the layer). The
// SOCI index of a manifest's zTOCs is named by the manifest's annotation
// (Manifests, a converter.ManifestFormat, which also adopts conversions
// published elsewhere once they check out) and listed beside it in the
// image index (Bind). VerifyZTOC checks a zTOC made anywhere against its
// layer by replaying it as soci-snapshotter reads it.
//
// Its code needs cgo (zlib, and soci-snapshotter's ztoc package); a build
// without cgo has none of it, and no soci format.
package soci
