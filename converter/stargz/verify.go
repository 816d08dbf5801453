package stargz

import (
	"archive/tar"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"hash"
	"io"

	"github.com/containerd/containerd/v2/core/content"
	"github.com/containerd/errdefs"
	"github.com/containerd/stargz-snapshotter/estargz"
	"github.com/containerd/stargz-snapshotter/estargz/zstdchunked"
	"github.com/klauspost/compress/gzip"
	"github.com/opencontainers/go-digest"
	ocispec "github.com/opencontainers/image-spec/specs-go/v1"

	"github.com/lazyconv/lazyconv/internal/layerio"
	"github.com/lazyconv/lazyconv/labels"
)

// Report is what Verify checked.
type Report struct {
	TOCDigest digest.Digest
	Entries   int   // TOC entries, chunks not counted
	Files     int   // regular files read back and checked
	Bytes     int64 // file bytes read back
}

// maxEntryJSON bounds the JSON of one TOC entry Verify decodes.
const maxEntryJSON = 1 << 20

// Verify checks an eStargz or zstd:chunked layer: its TOC against the TOC
// digest annotation, and every regular file, read back chunk by chunk from
// the offsets the TOC gives, against the chunk and file digests the TOC
// records. It streams the TOC: memory does not grow with the number of
// entries. A file that does not match is ErrDataLoss; a TOC that does not
// match or cannot be read is ErrInvalidArgument.
func Verify(ctx context.Context, cs content.Provider, desc ocispec.Descriptor) (Report, error) {
	want, err := digest.Parse(desc.Annotations[labels.TOCDigestAnnotation])
	if err != nil {
		return Report{}, fmt.Errorf("layer %s has no valid %s annotation: %w", desc.Digest, labels.TOCDigestAnnotation, errdefs.ErrInvalidArgument)
	}
	ra, err := cs.ReaderAt(ctx, desc)
	if err != nil {
		return Report{}, err
	}
	defer ra.Close()
	// The TOC and the chunks are read through blocks of their own: they
	// are at opposite ends of the blob.
	toc, chunks, err := openTOCJSONWithin(ctx, &blockReaderAt{ra: ra, size: ra.Size()}, &blockReaderAt{ra: ra, size: ra.Size()})
	if err != nil {
		return Report{}, fmt.Errorf("layer %s is not eStargz: %w", desc.Digest, err)
	}
	defer toc.Close()
	defer chunks.Close()
	tocDigest := digest.SHA256.Digester()
	v := &tocVerifier{ctx: ctx, chunks: chunks}
	tocReader := &refusalReader{r: toc}
	walkErr := walkTOC(io.TeeReader(tocReader, tocDigest.Hash()), false, v.entry)
	if walkErr == nil {
		walkErr = v.finish()
	}
	if _, err := io.Copy(io.Discard, io.TeeReader(tocReader, tocDigest.Hash())); err != nil && walkErr == nil {
		walkErr = fmt.Errorf("reading the TOC: %v: %w", err, errdefs.ErrInvalidArgument)
	}
	if tocReader.refused != nil {
		// Not read, so not comparable with its digest.
		return v.rep, fmt.Errorf("layer %s: reading its TOC: %w", desc.Digest, tocReader.refused)
	}
	v.rep.TOCDigest = tocDigest.Digest()
	if v.rep.TOCDigest != want {
		return v.rep, fmt.Errorf("layer %s: TOC digest %s, annotated %s: %w", desc.Digest, v.rep.TOCDigest, want, errdefs.ErrInvalidArgument)
	}
	if walkErr != nil {
		return v.rep, fmt.Errorf("layer %s: %w", desc.Digest, walkErr)
	}
	return v.rep, nil
}

// openTOCJSONWithin finds a blob's TOC by its footer (eStargz's, else
// zstd:chunked's), and returns a reader of the TOC's JSON and a reader of
// the blob's chunks (through data, the same blob) for its format, within
// the limits of ctx: zstd is decoded within its MaxZstdWindow.
func openTOCJSONWithin(ctx context.Context, ra, data SizedReaderAt) (io.ReadCloser, *chunkStreams, error) {
	sr := io.NewSectionReader(ra, 0, ra.Size())
	var tocOffset int64
	if err := contained(func() (err error) { tocOffset, _, err = estargz.OpenFooter(sr); return err }); err == nil &&
		tocOffset >= 0 && tocOffset < ra.Size() {
		zr, err := gzip.NewReader(io.NewSectionReader(ra, tocOffset, ra.Size()-tocOffset))
		if err != nil {
			return nil, nil, fmt.Errorf("its TOC is no gzip stream: %v: %w", err, errdefs.ErrInvalidArgument)
		}
		zr.Multistream(false) // one member, as estargz reads it
		tr := tar.NewReader(zr)
		h, err := tr.Next()
		if err != nil || h.Name != estargz.TOCTarName {
			zr.Close()
			return nil, nil, fmt.Errorf("its footer points at no TOC: %w", errdefs.ErrInvalidArgument)
		}
		return readCloser{tr, zr}, gzipChunks(data), nil
	}
	d := new(zstdchunked.Decompressor)
	if ra.Size() >= d.FooterSize() {
		footer := make([]byte, d.FooterSize())
		if _, err := ra.ReadAt(footer, ra.Size()-d.FooterSize()); err == nil {
			_, off, size, err := d.ParseFooter(footer)
			if err == nil && off >= 0 && size >= 0 && off+size <= ra.Size() {
				zr, err := layerio.NewZstdReader(ctx, io.NewSectionReader(ra, off, size))
				if err != nil {
					return nil, nil, err
				}
				return zr, zstdChunks(ctx, data), nil
			}
		}
	}
	return nil, nil, fmt.Errorf("no eStargz or zstd:chunked footer: %w", errdefs.ErrInvalidArgument)
}

// walkTOC decodes a TOC's JSON one entry at a time (no entry beyond
// maxEntryJSON), calling fn for each. Strict, the TOC must be exactly an
// object of "version" 1 and "entries", each once, and entries must have no
// field estargz.TOCEntry does not know: a reader decoding the TOC with
// encoding/json (stargz-snapshotter's, whose keys match case-insensitively
// and whose last duplicate wins) then sees the very entries fn saw.
func walkTOC(r io.Reader, strict bool, fn func(*estargz.TOCEntry) error) error {
	bounded := &boundedReader{r: r}
	dec := json.NewDecoder(bounded)
	if strict {
		dec.DisallowUnknownFields()
	}
	seen := map[string]bool{}
	malformed := func(what string, err error) error {
		return fmt.Errorf("malformed TOC (%s): %v: %w", what, err, errdefs.ErrInvalidArgument)
	}
	if t, err := dec.Token(); err != nil || t != json.Delim('{') {
		return malformed("not an object", err)
	}
	for dec.More() {
		key, err := dec.Token()
		if err != nil {
			return malformed("key", err)
		}
		if strict {
			name, _ := key.(string)
			if name != "version" && name != "entries" || seen[name] {
				return malformed(fmt.Sprintf("key %q", name), errors.New("a checked TOC has \"version\" and \"entries\", once each, and nothing else"))
			}
			seen[name] = true
			if name == "version" {
				var version int
				if err := dec.Decode(&version); err != nil || version != 1 {
					return malformed("version", fmt.Errorf("version %d, not 1 (%v)", version, err))
				}
				continue
			}
		}
		if key != "entries" {
			bounded.mark(dec.InputOffset())
			var skip json.RawMessage
			if err := dec.Decode(&skip); err != nil {
				return malformed(fmt.Sprint(key), err)
			}
			continue
		}
		if t, err := dec.Token(); err != nil || (t != json.Delim('[') && t != nil) {
			return malformed("entries", err)
		} else if t == nil {
			continue
		}
		for dec.More() {
			bounded.mark(dec.InputOffset())
			var e estargz.TOCEntry
			if err := dec.Decode(&e); err != nil {
				return malformed("entry", err)
			}
			if err := fn(&e); err != nil {
				return err
			}
		}
		if _, err := dec.Token(); err != nil {
			return malformed("entries", err)
		}
	}
	if _, err := dec.Token(); err != nil {
		return malformed("end", err)
	}
	return nil
}

// boundedReader fails once more than maxEntryJSON (and a read-ahead
// buffer) has been read since the last mark: one JSON value must not make
// the decoder buffer without bound.
type boundedReader struct {
	r        io.Reader
	read, at int64
}

func (b *boundedReader) mark(offset int64) { b.at = offset }

func (b *boundedReader) Read(p []byte) (int, error) {
	if b.read-b.at > maxEntryJSON+64<<10 {
		return 0, fmt.Errorf("a TOC entry is larger than %d bytes", maxEntryJSON)
	}
	n, err := b.r.Read(p)
	b.read += int64(n)
	return n, err
}

// tocVerifier checks the files of a TOC as its entries go by: a reg entry
// starts a file, its chunk entries continue it, and the file's digest is
// checked once its last byte is read.
type tocVerifier struct {
	ctx    context.Context
	chunks *chunkStreams
	rep    Report
	file   *estargz.TOCEntry // the file being read, nil between files
	want   digest.Digest
	hash   hash.Hash
	read   int64
	buf    []byte
}

func (v *tocVerifier) entry(e *estargz.TOCEntry) error {
	if err := v.ctx.Err(); err != nil {
		return err
	}
	if e.Type == "chunk" {
		if v.file == nil || e.Name != v.file.Name {
			return fmt.Errorf("malformed TOC: chunk of %q where no such file is being read: %w", e.Name, errdefs.ErrInvalidArgument)
		}
		return v.chunk(e)
	}
	if err := v.finish(); err != nil {
		return err
	}
	v.rep.Entries++
	if e.Type != "reg" {
		return nil
	}
	want, err := digest.Parse(e.Digest)
	if err != nil {
		return fmt.Errorf("%s: TOC digest %q: %v: %w", e.Name, e.Digest, err, errdefs.ErrInvalidArgument)
	}
	if e.Size < 0 {
		return fmt.Errorf("%s: negative size in the TOC: %w", e.Name, errdefs.ErrInvalidArgument)
	}
	f := *e
	v.file, v.want, v.hash, v.read = &f, want, want.Algorithm().Hash(), 0
	if e.Size == 0 {
		return v.finish()
	}
	return v.chunk(e)
}

// chunk reads one chunk of the current file.
func (v *tocVerifier) chunk(e *estargz.TOCEntry) error {
	f := v.file
	if e.ChunkOffset != v.read {
		return fmt.Errorf("malformed TOC: %s: chunk at %d, expected %d: %w", f.Name, e.ChunkOffset, v.read, errdefs.ErrInvalidArgument)
	}
	size := e.ChunkSize
	if size <= 0 || size > f.Size-e.ChunkOffset {
		size = f.Size - e.ChunkOffset
	}
	r, err := v.chunks.Open(e.Offset, e.InnerOffset)
	if err != nil {
		return fmt.Errorf("%s: chunk at offset %d: %w", f.Name, e.Offset, lostUnlessRefused(err))
	}
	var chunk digest.Verifier
	hashes := io.Writer(v.hash)
	if e.ChunkDigest != "" {
		cd, err := digest.Parse(e.ChunkDigest)
		if err != nil {
			return fmt.Errorf("%s: chunk digest %q: %v: %w", f.Name, e.ChunkDigest, err, errdefs.ErrInvalidArgument)
		}
		chunk = cd.Verifier()
		hashes = io.MultiWriter(v.hash, chunk)
	}
	if v.buf == nil {
		v.buf = make([]byte, 64<<10)
	}
	n, err := io.CopyBuffer(hashes, io.LimitReader(r, size), v.buf)
	v.read += n
	v.rep.Bytes += n
	if err != nil || n != size {
		return fmt.Errorf("reading %s: %d of %d bytes at offset %d: %w", f.Name, n, size, e.Offset, lostUnlessRefused(err))
	}
	if chunk != nil && !chunk.Verified() {
		return fmt.Errorf("%s: chunk at %d does not match its TOC digest %s: %w", f.Name, e.ChunkOffset, e.ChunkDigest, errdefs.ErrDataLoss)
	}
	if v.read == f.Size {
		return v.finish()
	}
	return nil
}

// finish checks the file being read, if any, once all its bytes are in.
func (v *tocVerifier) finish() error {
	f := v.file
	if f == nil {
		return nil
	}
	v.file = nil
	if v.read != f.Size {
		return fmt.Errorf("malformed TOC: %s: chunks cover %d of %d bytes: %w", f.Name, v.read, f.Size, errdefs.ErrInvalidArgument)
	}
	if got := digest.NewDigest(v.want.Algorithm(), v.hash); got != v.want {
		return fmt.Errorf("%s does not match its TOC digest %s: %w", f.Name, v.want, errdefs.ErrDataLoss)
	}
	v.rep.Files++
	return nil
}

// chunkStreams opens the compressed stream that starts at a chunk's offset,
// pointing one reused decompressor at it.
type chunkStreams struct {
	ra    SizedReaderAt
	reset func(r io.Reader) (io.Reader, error) // the decompressor, reading r
	close func()
}

// Open returns the uncompressed bytes of the stream at offset, inner bytes in.
func (c *chunkStreams) Open(offset, inner int64) (io.Reader, error) {
	if offset < 0 || offset >= c.ra.Size() {
		return nil, errors.New("offset outside the blob")
	}
	r, err := c.reset(io.NewSectionReader(c.ra, offset, c.ra.Size()-offset))
	if err != nil {
		return nil, err
	}
	return skip(r, inner)
}

// Close releases the decompressor.
func (c *chunkStreams) Close() error {
	if c.close != nil {
		c.close()
	}
	return nil
}

// gzipChunks reads eStargz chunks: a chunk never spans gzip members.
func gzipChunks(ra SizedReaderAt) *chunkStreams {
	var zr *gzip.Reader
	return &chunkStreams{ra: ra, reset: func(r io.Reader) (io.Reader, error) {
		var err error
		if zr == nil {
			zr, err = gzip.NewReader(r)
		} else {
			err = zr.Reset(r)
		}
		if err != nil {
			return nil, err
		}
		zr.Multistream(false)
		return zr, nil
	}}
}

// lostUnlessRefused classes a failure to read a file's data back: data
// loss, unless the data was refused as beyond a limit (a zstd window),
// which stays ErrInvalidArgument.
func lostUnlessRefused(err error) error {
	if errdefs.IsInvalidArgument(err) {
		return err
	}
	return fmt.Errorf("%v: %w", err, errdefs.ErrDataLoss)
}

// zstdChunks reads zstd:chunked chunks, within ctx's MaxZstdWindow.
func zstdChunks(ctx context.Context, ra SizedReaderAt) *chunkStreams {
	var zr *layerio.ZstdReader
	return &chunkStreams{ra: ra, reset: func(r io.Reader) (io.Reader, error) {
		var err error
		if zr == nil {
			zr, err = layerio.NewZstdReader(ctx, r)
		} else {
			err = zr.Reset(r)
		}
		if err != nil {
			return nil, err
		}
		return zr, nil
	}, close: func() {
		if zr != nil {
			zr.Close()
		}
	}}
}

func skip(r io.Reader, n int64) (io.Reader, error) {
	if n > 0 {
		if m, err := io.CopyN(io.Discard, r, n); err != nil || m != n {
			return nil, fmt.Errorf("skipping %d bytes into the stream: %v", n, err)
		}
	}
	return r, nil
}

// refusalReader remembers a refusal (ErrInvalidArgument: a limit) of the
// reader it reads.
type refusalReader struct {
	r       io.Reader
	refused error
}

func (r *refusalReader) Read(p []byte) (int, error) {
	n, err := r.r.Read(p)
	if err != nil && r.refused == nil && errdefs.IsInvalidArgument(err) {
		r.refused = err
	}
	return n, err
}

type readCloser struct {
	io.Reader
	io.Closer
}

type closerFunc func()

func (f closerFunc) Close() error { f(); return nil }

// blockReaderAt reads its source in 4 MiB blocks and keeps the last one: the
// many small reads of a walk over an eStargz blob become a few large ones,
// which matters when the store is across a socket.
type blockReaderAt struct {
	ra    io.ReaderAt
	size  int64
	block []byte
	start int64
}

const verifyBlockSize = 4 << 20

// Size is the blob's size.
func (b *blockReaderAt) Size() int64 { return b.size }

func (b *blockReaderAt) ReadAt(p []byte, off int64) (int, error) {
	if len(p) > verifyBlockSize/2 {
		return b.ra.ReadAt(p, off)
	}
	n := 0
	for n < len(p) {
		pos := off + int64(n)
		if pos >= b.size {
			return n, io.EOF
		}
		if b.block == nil || pos < b.start || pos >= b.start+int64(len(b.block)) {
			b.start = pos - pos%verifyBlockSize
			size := min(int64(verifyBlockSize), b.size-b.start)
			if cap(b.block) < int(size) {
				b.block = make([]byte, size)
			}
			b.block = b.block[:size]
			if _, err := b.ra.ReadAt(b.block, b.start); err != nil && err != io.EOF {
				b.block = nil
				return n, err
			}
		}
		n += copy(p[n:], b.block[pos-b.start:])
	}
	return n, nil
}
