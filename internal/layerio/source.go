// Package layerio is the layer I/O every format shares: opening a source
// layer as its uncompressed tar (hashing it into the source diffID on the
// way), writing a new blob into the content store under a lease with nothing
// left behind on failure, and classifying read failures as bad input.
package layerio

import (
	"archive/tar"
	"bufio"
	"bytes"
	"context"
	"crypto/sha256"
	"fmt"
	"hash"
	"io"
	"sync/atomic"

	"github.com/containerd/containerd/v2/core/content"
	"github.com/containerd/errdefs"
	"github.com/klauspost/compress/gzip"
	"github.com/opencontainers/go-digest"
	ocispec "github.com/opencontainers/image-spec/specs-go/v1"

	"github.com/lazyconv/lazyconv/converter"
)

// Source is a layer blob opened for conversion: a decompressed tar stream
// that hashes what it yields (the source diffID), counts the compressed bytes
// read, and remembers the first error the blob or its decompression gave, so
// that a failed conversion can tell bad input from a failing store.
//
// The blob is decompressed and hashed a few buffers ahead of the reader, in
// a goroutine of its own. Its tar is inspected by Go's tar reader either
// beside the reader (in a goroutine of its own, through a pipe) or, for a
// reader that parses the tar itself, in line: see Inline.
type Source struct {
	ctx       context.Context
	ra        content.ReaderAt
	decomp    io.ReadCloser
	ahead     *readAhead
	diffHash  hash.Hash
	inputErr  error
	closeOnce atomic.Bool
	inspect   *inspector
	inline    bool // the reader inspects each entry (Entry) as it parses it
	parsed    bool // the reader's parse reached the end of the archive (inline)
	ended     bool
}

// Open opens desc from cs for reading its uncompressed tar. bytesIn, if not
// nil, is advanced by the compressed bytes read. A media type that is not a
// layer, or compressed data that does not match it, is ErrInvalidArgument.
func Open(ctx context.Context, cs content.Provider, desc ocispec.Descriptor, bytesIn *atomic.Int64) (*Source, error) {
	ra, br, actual, err := openLayer(ctx, cs, desc, bytesIn, 1<<20)
	if err != nil {
		return nil, err
	}
	s := &Source{ctx: ctx, ra: ra, diffHash: sha256.New(), inspect: newInspector(converter.LimitsFrom(ctx))}
	switch actual {
	case converter.Gzip:
		zr, err := gzip.NewReader(br)
		if err != nil {
			ra.Close()
			return nil, fmt.Errorf("%v: %w", err, errdefs.ErrInvalidArgument)
		}
		s.decomp = zr
	case converter.Zstd:
		zr, err := NewZstdReader(ctx, br)
		if err != nil {
			ra.Close()
			return nil, fmt.Errorf("%v: %w", err, errdefs.ErrInvalidArgument)
		}
		s.decomp = zr
	default:
		s.decomp = io.NopCloser(br)
	}
	s.ahead = newReadAhead(s.decomp, s.diffHash)
	return s, nil
}

// Inline makes the reader the inspector's parser: instead of a second parse
// of every byte beside it, the reader (which parses the tar with Go's tar
// reader itself) hands each header to Entry as it parses it, the bytes
// after the end-of-archive marker to Trailing, and calls EndOfArchive at
// the end. Call it before the first Read.
func (s *Source) Inline() { s.inline = true }

// Entry checks one header of an inline inspection (see Inline): nil, or the
// rule it breaks (ErrInvalidArgument), which is also the verdict.
func (s *Source) Entry(h *tar.Header) error {
	if err := s.inspect.entry(h); err != nil {
		s.inspect.fail(err)
	}
	return s.inspect.failure()
}

// Trailing checks that n bytes following the end-of-archive marker are
// within the limit (inline inspection).
func (s *Source) Trailing(n int64) error {
	if err := s.inspect.trailingLimit(n); err != nil {
		s.inspect.fail(err)
	}
	return s.inspect.failure()
}

// EndOfArchive records that an inline inspection parsed the whole tar.
func (s *Source) EndOfArchive() { s.parsed = true }

// Reserve refuses entries at these paths (the output format's own metadata);
// call it before the first Read.
func (s *Source) Reserve(paths ...string) {
	s.inspect.mu.Lock()
	defer s.inspect.mu.Unlock()
	if s.inspect.reserved == nil {
		s.inspect.reserved = map[string]bool{}
	}
	for _, p := range paths {
		s.inspect.reserved[p] = true
	}
}

// Read yields the uncompressed tar, and stops when the context is done or
// the tar breaks a rule (see Checked); the error then is the rule's.
func (s *Source) Read(p []byte) (int, error) {
	if err := context.Cause(s.ctx); err != nil {
		return 0, err
	}
	if err := s.inspect.failure(); err != nil {
		s.setInputErr(err)
		return 0, err
	}
	if s.ended {
		return 0, io.EOF
	}
	if !s.inline && !s.inspect.started() {
		s.inspect.start()
	}
	n, err := s.ahead.Read(p)
	if n > 0 && !s.inline {
		s.inspect.write(p[:n])
	}
	if err == io.EOF {
		s.ended = true
		if !s.inline {
			if verdict := s.inspect.finish(); verdict != nil {
				s.setInputErr(verdict)
				return n, verdict
			}
		}
	}
	if verdict := s.inspect.failure(); verdict != nil {
		s.setInputErr(verdict)
		return n, verdict
	}
	if err != nil && err != io.EOF {
		s.setInputErr(err)
	}
	return n, err
}

func (s *Source) setInputErr(err error) {
	if s.inputErr == nil {
		s.inputErr = err
	}
}

// Checked returns the verdict on the whole tar once it has been read to its
// end: nil, or an ErrInvalidArgument error naming the entry or limit at fault.
func (s *Source) Checked() error {
	if !s.ended {
		return fmt.Errorf("the layer was not read to its end: %w", errdefs.ErrInvalidArgument)
	}
	if verdict := s.inspect.failure(); verdict != nil || !s.inline || s.parsed {
		return verdict
	}
	return fmt.Errorf("the layer's tar was not parsed to its end-of-archive marker: %w", errdefs.ErrInvalidArgument)
}

// Sparse lists the entries no lossless format can carry byte for byte (sparse
// files), once the tar has been read to its end.
func (s *Source) Sparse() []string {
	s.inspect.mu.Lock()
	defer s.inspect.mu.Unlock()
	return append([]string(nil), s.inspect.sparse...)
}

// Drain reads the rest of the stream, so that the diffID covers every byte
// and trailing corruption is noticed.
func (s *Source) Drain() error {
	_, err := io.Copy(io.Discard, s)
	return err
}

// DiffID is the digest of the uncompressed tar, once it has been read to
// its end (before, the read-ahead may still be writing the hash).
func (s *Source) DiffID() digest.Digest {
	if !s.ended {
		return ""
	}
	return digest.NewDigestFromBytes(digest.SHA256, s.diffHash.Sum(nil))
}

// Hash is a copy of the state of the hash the diffID is, once the tar has
// been read to its end: a format whose uncompressed layer is the source's
// tar followed by more bytes (eStargz's TOC entry) continues it rather
// than hash the tar a second time.
func (s *Source) Hash() (hash.Hash, error) {
	if !s.ended {
		return nil, fmt.Errorf("the layer was not read to its end: %w", errdefs.ErrFailedPrecondition)
	}
	c, err := s.diffHash.(hash.Cloner).Clone()
	return c, err
}

// Close releases the blob.
func (s *Source) Close() error {
	if !s.closeOnce.CompareAndSwap(false, true) {
		return nil
	}
	if !s.ended && s.inspect.started() {
		s.inspect.abort()
	}
	// Stop the read-ahead; closing the blob first ends a read it is in.
	close(s.ahead.stop)
	err := s.ra.Close()
	<-s.ahead.done
	s.decomp.Close()
	return err
}

// InputError classifies a failure while reading the source: a cancelled
// context stays what it is, so do a store's NotFound and Unavailable;
// anything the source or its tar gave is bad input (ErrInvalidArgument).
func (s *Source) InputError(err error) error {
	if ctxErr := context.Cause(s.ctx); ctxErr != nil {
		return ctxErr
	}
	if s.inputErr != nil {
		err = s.inputErr
	}
	if errdefs.IsNotFound(err) || errdefs.IsUnavailable(err) || errdefs.IsInvalidArgument(err) {
		return err
	}
	return fmt.Errorf("reading source: %v: %w", err, errdefs.ErrInvalidArgument)
}

// OpenBlob opens desc's blob as it is stored, for a format that decompresses
// it itself, after the same checks as Open: a layer media type, and data
// whose compression matches it.
func OpenBlob(ctx context.Context, cs content.Provider, desc ocispec.Descriptor) (content.ReaderAt, error) {
	ra, _, _, err := openLayer(ctx, cs, desc, nil, 16)
	return ra, err
}

// openLayer opens a layer blob behind a buffer of bufSize (counting what is
// read into bytesIn) and returns its actual compression, once it is known to
// match the media type.
func openLayer(ctx context.Context, cs content.Provider, desc ocispec.Descriptor, bytesIn *atomic.Int64, bufSize int) (content.ReaderAt, *bufio.Reader, converter.Compression, error) {
	declared, err := converter.LayerCompression(desc.MediaType)
	if err != nil {
		return nil, nil, 0, err
	}
	ra, err := cs.ReaderAt(ctx, desc)
	if err != nil {
		return nil, nil, 0, err
	}
	br := bufio.NewReaderSize(&CountingReader{R: io.NewSectionReader(ra, 0, ra.Size()), N: bytesIn}, bufSize)
	actual := sniffCompression(br)
	if err := matches(desc.MediaType, declared, actual); err != nil {
		ra.Close()
		return nil, nil, 0, err
	}
	return ra, br, actual, nil
}

// matches checks a blob's compression against its media type: a compressed
// media type over data with no such magic is bad input; an uncompressed media
// type over compressed data is read as what it is.
func matches(mediaType string, declared, actual converter.Compression) error {
	if actual != declared && !(declared == converter.Uncompressed && actual != converter.Uncompressed) {
		return fmt.Errorf("media type %q declares %s data but the blob is not: %w",
			mediaType, declared, errdefs.ErrInvalidArgument)
	}
	return nil
}

func sniffCompression(br *bufio.Reader) converter.Compression {
	head, _ := br.Peek(4)
	switch {
	case bytes.HasPrefix(head, []byte{0x1f, 0x8b}):
		return converter.Gzip
	case bytes.HasPrefix(head, []byte{0x28, 0xb5, 0x2f, 0xfd}):
		return converter.Zstd
	default:
		return converter.Uncompressed
	}
}

// CountingReader counts the bytes read through R into N (if not nil), for progress.
type CountingReader struct {
	R io.Reader
	N *atomic.Int64
}

// Read reads from R and counts what it read.
func (c *CountingReader) Read(p []byte) (int, error) {
	n, err := c.R.Read(p)
	if c.N != nil {
		c.N.Add(int64(n))
	}
	return n, err
}
