package stargz

import (
	"archive/tar"
	"context"
	"crypto/sha256"
	"encoding/binary"
	"fmt"
	"hash"
	"io"
	"reflect"
	"strconv"

	"github.com/containerd/containerd/v2/core/content"
	"github.com/containerd/errdefs"
	"github.com/containerd/stargz-snapshotter/estargz"
	"github.com/containerd/stargz-snapshotter/estargz/zstdchunked"
	"github.com/klauspost/compress/zstd"
	"github.com/opencontainers/go-digest"
	ocispec "github.com/opencontainers/image-spec/specs-go/v1"

	"github.com/lazyconv/lazyconv/converter"
	"github.com/lazyconv/lazyconv/internal/layerio"
	"github.com/lazyconv/lazyconv/labels"
)

// VerifyPublished checks a layer converted elsewhere (desc, local) against
// the source it claims to be a lossless conversion of, whose uncompressed
// digest is sourceDiffID, without converting anything: see CheckSource.
func (c *tocConverter) VerifyPublished(ctx context.Context, cs content.Store, desc ocispec.Descriptor, sourceDiffID digest.Digest) (converter.Verified, error) {
	return CheckSource(ctx, cs, desc, c.out, sourceDiffID)
}

// CheckSource reads a lossless eStargz (comp Gzip) or zstd:chunked (comp
// Zstd) layer once, from its first byte to its last, and checks that it is
// a faithful conversion of the tar whose digest is sourceDiffID:
//   - the payload (every byte before the TOC, what estargz.Unpack yields)
//     hashes to sourceDiffID, and ends where a compressed stream ends;
//   - the TOC lists the payload's entries, one for one and in order, each
//     as estargz's lossless writer records its tar header (name, type, mode,
//     uid/gid and names, size, link target, device numbers, modification
//     time, xattrs); nothing more, nothing less;
//   - each regular file's chunks cover it in order, each chunk starts a
//     compressed stream at the TOC's offset whose first bytes (past its
//     inner offset) are the chunk's data in the payload, and the chunk and
//     file digests are those of that data.
//
// It returns the layer's diffID (all of it uncompressed) and the
// annotations a local conversion gives its descriptor, recomputed from the
// blob: the caller compares them with the published ones. Memory does not
// grow with the layer: the TOC is decoded entry by entry beside the payload.
// A layer that does not check out is ErrInvalidArgument, saying why.
func CheckSource(ctx context.Context, cs content.Provider, desc ocispec.Descriptor, comp converter.Compression, sourceDiffID digest.Digest) (converter.Verified, error) {
	ra, err := cs.ReaderAt(ctx, desc)
	if err != nil {
		return converter.Verified{}, err
	}
	defer ra.Close()
	size := ra.Size()
	if size != desc.Size {
		return converter.Verified{}, fmt.Errorf("layer %s is %d bytes, its descriptor says %d: %w", desc.Digest, size, desc.Size, errdefs.ErrInvalidArgument)
	}
	toc, err := locateTOC(ra, size, comp)
	if err != nil {
		return converter.Verified{}, fmt.Errorf("layer %s: %w", desc.Digest, err)
	}
	tocJSON, err := toc.open(ctx)
	if err != nil {
		return converter.Verified{}, fmt.Errorf("layer %s: TOC: %w", desc.Digest, err)
	}
	defer tocJSON.Close()

	var cursor streamCursor
	if comp == converter.Gzip {
		cursor = newGzipCursor(ra, size)
	} else {
		cursor = newZstdCursor(ctx, ra, size)
	}
	defer cursor.close()
	diff := sha256.New()
	streams := newStreamReader(cursor, size, diff)
	streams.limit = toc.payloadEnd
	ch := &sourceChecker{ctx: ctx, streams: streams, unames: map[int]string{}, gnames: map[int]string{},
		maxEntries: converter.LimitsFrom(ctx).MaxEntries}
	ch.tr = tar.NewReader(streams)
	tocDigest := digest.SHA256.Digester()
	walkErr := walkTOC(io.TeeReader(tocJSON, tocDigest.Hash()), true, ch.entry)
	if walkErr == nil {
		walkErr = ch.end()
	}
	if walkErr != nil {
		return converter.Verified{}, fmt.Errorf("layer %s: %w", desc.Digest, walkErr)
	}
	if _, err := io.Copy(tocDigest.Hash(), tocJSON); err != nil {
		return converter.Verified{}, fmt.Errorf("layer %s: reading the TOC: %v: %w", desc.Digest, err, errdefs.ErrInvalidArgument)
	}
	// The payload: the rest of the tar (end-of-archive and any padding).
	if _, err := io.Copy(io.Discard, streams); err != nil {
		return converter.Verified{}, fmt.Errorf("layer %s: %w", desc.Digest, err)
	}
	if payload := digest.NewDigestFromBytes(digest.SHA256, diff.Sum(nil)); payload != sourceDiffID {
		return converter.Verified{}, fmt.Errorf("layer %s: its payload is %s uncompressed, not the source's %s: %w",
			desc.Digest, payload, sourceDiffID, errdefs.ErrInvalidArgument)
	}
	// Then the TOC, one stream that ends where the footer begins (nothing a
	// reader could take for more of the layer between them), and the
	// footer, for the diffID of the whole layer.
	before := streams.opened
	streams.limit = toc.footerStart
	if _, err := io.Copy(io.Discard, streams); err != nil {
		return converter.Verified{}, fmt.Errorf("layer %s: after the payload: %w", desc.Digest, err)
	}
	if streams.opened-before != 1 {
		return converter.Verified{}, fmt.Errorf("layer %s: %d streams between the payload and the footer, not the TOC's one: %w",
			desc.Digest, streams.opened-before, errdefs.ErrInvalidArgument)
	}
	streams.limit = size
	if _, err := io.Copy(io.Discard, streams); err != nil {
		return converter.Verified{}, fmt.Errorf("layer %s: %w", desc.Digest, err)
	}
	annotations := map[string]string{
		labels.TOCDigestAnnotation:        tocDigest.Digest().String(),
		labels.UncompressedSizeAnnotation: strconv.FormatInt(streams.pos, 10),
	}
	for k, v := range toc.annotations {
		annotations[k] = v
	}
	return converter.Verified{DiffID: digest.NewDigestFromBytes(digest.SHA256, diff.Sum(nil)), Annotations: annotations}, nil
}

// maxZstdWindow is the zstd window limit of ctx's conversion.
func maxZstdWindow(ctx context.Context) uint64 {
	if w := converter.LimitsFrom(ctx).MaxZstdWindow; w > 0 {
		return uint64(w)
	}
	return 0 // negative: none
}

// tocLocation is where a layer's TOC is, as its footer says.
type tocLocation struct {
	payloadEnd  int64 // the payload's compressed end: where the TOC's stream starts
	footerStart int64 // where the footer's stream starts, just past the TOC's
	open        func(ctx context.Context) (io.ReadCloser, error)
	annotations map[string]string // format-specific annotations derived from the footer and TOC
}

// locateTOC reads the footer of a layer of compression comp.
func locateTOC(ra io.ReaderAt, size int64, comp converter.Compression) (tocLocation, error) {
	if comp == converter.Gzip {
		tocOffset, footerSize, err := estargz.OpenFooter(io.NewSectionReader(ra, 0, size))
		if err != nil || tocOffset < 0 || tocOffset >= size-footerSize {
			return tocLocation{}, fmt.Errorf("no eStargz footer: %v: %w", err, errdefs.ErrInvalidArgument)
		}
		return tocLocation{payloadEnd: tocOffset, footerStart: size - footerSize, open: func(ctx context.Context) (io.ReadCloser, error) {
			toc, chunks, err := openTOCJSONWithin(ctx, &blockReaderAt{ra: ra, size: size}, &blockReaderAt{ra: ra, size: size})
			if err != nil {
				return nil, err
			}
			chunks.Close()
			return toc, nil
		}}, nil
	}
	footerSize := int64(zstdchunked.FooterSize)
	if size < footerSize+8 {
		return tocLocation{}, fmt.Errorf("no zstd:chunked footer: %w", errdefs.ErrInvalidArgument)
	}
	footer := make([]byte, footerSize)
	if _, err := ra.ReadAt(footer, size-footerSize); err != nil {
		return tocLocation{}, err
	}
	payloadEnd, tocOff, csize, err := new(zstdchunked.Decompressor).ParseFooter(footer)
	usize := int64(binary.LittleEndian.Uint64(footer[16:24]))
	kind := binary.LittleEndian.Uint64(footer[24:32])
	if err != nil || payloadEnd < 0 || csize < 0 || tocOff+csize != size-footerSize-8 || kind != zstdManifestTypeCRFS {
		return tocLocation{}, fmt.Errorf("no valid zstd:chunked footer: %w", errdefs.ErrInvalidArgument)
	}
	// The TOC's skippable frame must say it holds exactly the TOC.
	var frame [8]byte
	var h zstd.Header
	if _, err := ra.ReadAt(frame[:], payloadEnd); err != nil || h.Decode(frame[:]) != nil || !h.Skippable || int64(h.SkippableSize) != csize {
		return tocLocation{}, fmt.Errorf("the zstd:chunked TOC is not in the skippable frame its footer points at: %w", errdefs.ErrInvalidArgument)
	}
	compressed := digest.SHA256.Digester()
	if _, err := io.Copy(compressed.Hash(), io.NewSectionReader(ra, tocOff, csize)); err != nil {
		return tocLocation{}, err
	}
	return tocLocation{
		payloadEnd:  payloadEnd,
		footerStart: size - footerSize - 8,
		open: func(ctx context.Context) (io.ReadCloser, error) {
			cur := newZstdCursor(ctx, ra, size)
			cur.pos = tocOff
			r, err := cur.open()
			if err != nil {
				cur.close()
				return nil, fmt.Errorf("%v: %w", err, errdefs.ErrInvalidArgument)
			}
			if cur.pos != tocOff+csize {
				cur.close()
				return nil, fmt.Errorf("the TOC is not one zstd frame of %d bytes: %w", csize, errdefs.ErrInvalidArgument)
			}
			return readCloser{&sizeChecked{r: r, want: usize}, closerFunc(cur.close)}, nil
		},
		annotations: map[string]string{
			zstdchunked.ManifestChecksumAnnotation: compressed.Digest().String(),
			zstdchunked.ManifestPositionAnnotation: fmt.Sprintf("%d:%d:%d:%d", tocOff, csize, usize, zstdManifestTypeCRFS),
		},
	}, nil
}

// sizeChecked fails at the end of r unless it had want bytes.
type sizeChecked struct {
	r    io.Reader
	n    int64
	want int64
}

func (s *sizeChecked) Read(p []byte) (int, error) {
	n, err := s.r.Read(p)
	s.n += int64(n)
	if s.n > s.want || err == io.EOF && s.n != s.want {
		return n, fmt.Errorf("the TOC is %d bytes uncompressed, its footer says %d: %w", s.n, s.want, errdefs.ErrInvalidArgument)
	}
	return n, err
}

// sourceChecker walks a TOC and the payload's tar side by side.
type sourceChecker struct {
	ctx            context.Context
	streams        *streamReader
	tr             *tar.Reader
	unames, gnames map[int]string
	entries        int64
	maxEntries     int64

	file      *estargz.TOCEntry // the regular file whose chunks are being checked
	fileHash  hash.Hash
	read      int64 // its bytes checked
	chunkHash hash.Hash
	buf       []byte
}

// entry checks one TOC entry against the payload.
func (c *sourceChecker) entry(e *estargz.TOCEntry) error {
	if err := c.ctx.Err(); err != nil {
		return err
	}
	if e.Type == "chunk" {
		if c.file == nil || e.Name != c.file.Name {
			return fmt.Errorf("the TOC has a chunk of %q where no such file is being read: %w", e.Name, errdefs.ErrInvalidArgument)
		}
		return c.chunk(e, estargz.TOCEntry{Name: e.Name, Type: "chunk"})
	}
	if err := c.finishFile(); err != nil {
		return err
	}
	h, err := c.tr.Next()
	if err == io.EOF {
		return fmt.Errorf("the TOC lists %q beyond the payload's last entry: %w", e.Name, errdefs.ErrInvalidArgument)
	}
	if err != nil {
		return fmt.Errorf("the payload is no tar: %v: %w", err, errdefs.ErrInvalidArgument)
	}
	c.entries++
	if converter.Exceeds(c.entries, c.maxEntries) {
		return fmt.Errorf("the layer has more than %d entries (the limit; raise max_entries): %w", c.maxEntries, errdefs.ErrInvalidArgument)
	}
	if err := layerio.SafeName(h.Name); err != nil {
		return fmt.Errorf("entry %q: %w", h.Name, err)
	}
	if h.Typeflag == tar.TypeLink {
		if err := layerio.SafeName(h.Linkname); err != nil {
			return fmt.Errorf("hard link %q to %q: %w", h.Name, h.Linkname, err)
		}
	}
	want, err := tocEntryOf(h, c.unames, c.gnames)
	if err != nil {
		return fmt.Errorf("entry %q: %v: %w", h.Name, err, errdefs.ErrInvalidArgument)
	}
	if want.Type != "reg" {
		return sameEntry(e, &want)
	}
	if want.Size == 0 {
		want.Digest = digest.NewDigestFromBytes(digest.SHA256, emptySHA256[:]).String()
		return sameEntry(e, &want)
	}
	d, err := digest.Parse(e.Digest)
	if err != nil || d.Algorithm() != digest.SHA256 {
		return fmt.Errorf("the TOC's %q has digest %q: %w", e.Name, e.Digest, errdefs.ErrInvalidArgument)
	}
	want.Digest = e.Digest
	f := want
	c.file, c.read = &f, 0
	if c.fileHash == nil {
		c.fileHash, c.chunkHash, c.buf = sha256.New(), sha256.New(), make([]byte, 64<<10)
	}
	c.fileHash.Reset()
	return c.chunk(e, want)
}

// chunk checks one chunk of the current file: e is the TOC's entry, want
// what it must be but for the chunk's own fields, which are checked here.
func (c *sourceChecker) chunk(e *estargz.TOCEntry, want estargz.TOCEntry) error {
	f := c.file
	remain := f.Size - c.read
	size := e.ChunkSize
	if size == 0 {
		size = remain
	}
	if e.ChunkOffset != c.read || size <= 0 || size > remain {
		return fmt.Errorf("the TOC's chunk of %q at %d (size %d) does not continue the file's %d of %d bytes: %w",
			e.Name, e.ChunkOffset, e.ChunkSize, c.read, f.Size, errdefs.ErrInvalidArgument)
	}
	offset, began, err := c.streams.streamOfNext()
	if err != nil {
		return fmt.Errorf("%q: %w", e.Name, err)
	}
	if e.Offset != offset || e.InnerOffset != c.streams.pos-began {
		return fmt.Errorf("the TOC puts the chunk of %q at %d in the stream at offset %d (+%d); its data is in the stream at %d (+%d): %w",
			e.Name, e.ChunkOffset, e.Offset, e.InnerOffset, offset, c.streams.pos-began, errdefs.ErrInvalidArgument)
	}
	c.chunkHash.Reset()
	n, err := io.CopyBuffer(io.MultiWriter(c.chunkHash, c.fileHash), io.LimitReader(c.tr, size), c.buf)
	if err != nil || n != size {
		return fmt.Errorf("reading %q: %d of %d bytes: %v: %w", e.Name, n, size, err, errdefs.ErrInvalidArgument)
	}
	c.read += size
	want.Offset, want.InnerOffset, want.ChunkOffset, want.ChunkSize = e.Offset, e.InnerOffset, e.ChunkOffset, e.ChunkSize
	want.ChunkDigest = digest.NewDigestFromBytes(digest.SHA256, c.chunkHash.Sum(nil)).String()
	if e.Type != "chunk" {
		want.Digest = e.Digest // checked once the file is read
	}
	return sameEntry(e, &want)
}

// finishFile checks the file whose chunks were being checked, if any.
func (c *sourceChecker) finishFile() error {
	f := c.file
	if f == nil {
		return nil
	}
	c.file = nil
	if c.read != f.Size {
		return fmt.Errorf("the TOC's chunks of %q cover %d of its %d bytes: %w", f.Name, c.read, f.Size, errdefs.ErrInvalidArgument)
	}
	if got := digest.NewDigestFromBytes(digest.SHA256, c.fileHash.Sum(nil)).String(); got != f.Digest {
		return fmt.Errorf("the TOC gives %q the digest %s, its data is %s: %w", f.Name, f.Digest, got, errdefs.ErrInvalidArgument)
	}
	return nil
}

// end checks that the payload has no entry the TOC does not list.
func (c *sourceChecker) end() error {
	if err := c.finishFile(); err != nil {
		return err
	}
	h, err := c.tr.Next()
	if err == nil {
		return fmt.Errorf("the payload's entry %q is not in the TOC: %w", h.Name, errdefs.ErrInvalidArgument)
	}
	if err != io.EOF {
		return fmt.Errorf("the payload is no tar: %v: %w", err, errdefs.ErrInvalidArgument)
	}
	return nil
}

// sameEntry reports a TOC entry that is not what the payload says it must be.
func sameEntry(got, want *estargz.TOCEntry) error {
	if reflect.DeepEqual(got, want) {
		return nil
	}
	return fmt.Errorf("the TOC's entry %+v is not the payload's %+v: %w", *got, *want, errdefs.ErrInvalidArgument)
}
