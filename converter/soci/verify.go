//go:build cgo

package soci

import (
	"bytes"
	"context"
	"encoding/binary"
	"errors"
	"fmt"
	"io"
	"runtime"
	"sync"

	"compress/flate"
	"github.com/awslabs/soci-snapshotter/ztoc"
	"github.com/awslabs/soci-snapshotter/ztoc/compression"
	fbs "github.com/awslabs/soci-snapshotter/ztoc/fbs/ztoc"
	"github.com/containerd/containerd/v2/core/content"
	"github.com/containerd/errdefs"
	"github.com/opencontainers/go-digest"
	ocispec "github.com/opencontainers/image-spec/specs-go/v1"

	"github.com/lazyconv/lazyconv/converter"
	"github.com/lazyconv/lazyconv/internal/layerio"
)

// maxZTOCBytes bounds a zTOC read to be checked: its checkpoints' bound and
// as much again for its file table.
const maxZTOCBytes = 2 * maxCheckpointBytes

// maxDeflateRatio is the most bytes one byte of deflate can inflate to.
const maxDeflateRatio = 1032

// maxInflight bounds the bytes of the spans a check holds at once.
const maxInflight = 256 << 20

// maxSpanSlack bounds how far a span may run past the span size: a span
// ends at the first deflate block boundary after it, and zlib's blocks hold
// at most 4 MiB of output (16 Ki symbols of 258 bytes).
const maxSpanSlack = 16 << 20

// maxTrailingBytes bounds the bytes a layer's tar may hold after what its
// zTOC covers (soci's size ends at the end-of-archive marker; tar pads the
// archive to its record size after it).
const maxTrailingBytes = 1 << 20

// Report is what checking a zTOC against its layer found.
type Report struct {
	// Spans is the number of gzip checkpoints (spans) checked.
	Spans int
	// Files is the number of file table entries checked.
	Files int
	// Bytes is the uncompressed size of the layer.
	Bytes int64
	// Rebuilt: a span starting mid-byte holds a stored block, which Go's
	// inflate cannot replay from its checkpoint, so the zTOC was checked
	// by building it here and comparing bytes.
	Rebuilt bool
}

// VerifyZTOC checks the zTOC z (in cs) of the gzip layer (in cs) whose
// uncompressed digest is diffID, without building one: every span is
// inflated from its own checkpoint as soci-snapshotter inflates it (on
// every core), the spans put end to end must be the layer's tar (diffID),
// each span's compressed bytes must have the digest the zTOC gives, and
// the file table must be the one soci's builder makes of that tar. Each
// byte of the layer is inflated once. A zTOC that does not check out is
// ErrInvalidArgument, saying why.
func VerifyZTOC(ctx context.Context, cs content.Store, layer ocispec.Descriptor, diffID digest.Digest, z ocispec.Descriptor, o Options) (Report, error) {
	if err := o.Validate(); err != nil {
		return Report{}, err
	}
	if z.Size > maxZTOCBytes {
		return Report{}, fmt.Errorf("zTOC %s is %d bytes, beyond the limit of %d: %w", z.Digest, z.Size, maxZTOCBytes, errdefs.ErrInvalidArgument)
	}
	b, err := content.ReadBlob(ctx, cs, z)
	if err != nil {
		return Report{}, err
	}
	if err := decodedSize(b, converter.LimitsFrom(ctx)); err != nil {
		return Report{}, fmt.Errorf("zTOC %s: %v: %w", z.Digest, err, errdefs.ErrInvalidArgument)
	}
	zt, err := unmarshal(b)
	if err != nil {
		return Report{}, fmt.Errorf("zTOC %s: %v: %w", z.Digest, err, errdefs.ErrInvalidArgument)
	}
	invalid := func(format string, args ...any) (Report, error) {
		return Report{}, fmt.Errorf("zTOC %s of layer %s: %s: %w", z.Digest, layer.Digest, fmt.Sprintf(format, args...), errdefs.ErrInvalidArgument)
	}
	switch {
	case zt.Version != ztoc.Version09:
		return invalid("version %q, not %q", zt.Version, ztoc.Version09)
	case zt.CompressionAlgorithm != compression.Gzip:
		return invalid("compression %q, not gzip", zt.CompressionAlgorithm)
	case int64(zt.CompressedArchiveSize) != layer.Size:
		return invalid("it indexes %d compressed bytes, the layer has %d", zt.CompressedArchiveSize, layer.Size)
	case zt.UncompressedArchiveSize < 0 || int64(zt.UncompressedArchiveSize) > layer.Size*maxDeflateRatio+maxTrailingBytes:
		return invalid("it gives the tar as %d bytes, which %d bytes of gzip cannot hold", zt.UncompressedArchiveSize, layer.Size)
	case len(zt.Checkpoints) > maxCheckpointBytes:
		return invalid("%d bytes of checkpoints, beyond the limit of %d", len(zt.Checkpoints), maxCheckpointBytes)
	case len(zt.SpanDigests) != int(zt.MaxSpanID)+1:
		return invalid("%d span digests for %d spans", len(zt.SpanDigests), int(zt.MaxSpanID)+1)
	}
	spanSize, cps, err := parseCheckpoints(zt.Checkpoints)
	if err != nil {
		return invalid("its checkpoints: %v", err)
	}
	if spanSize != o.SpanSize {
		return invalid("its checkpoints are at span %d, not span %d", spanSize, o.SpanSize)
	}
	if len(cps) != int(zt.MaxSpanID)+1 {
		return invalid("%d checkpoints for %d spans", len(cps), int(zt.MaxSpanID)+1)
	}
	ra, err := cs.ReaderAt(ctx, layer)
	if err != nil {
		return Report{}, err
	}
	defer ra.Close()
	total, err := uncompressedSize(ra, layer.Size, int64(zt.UncompressedArchiveSize))
	if err != nil {
		return invalid("%v", err)
	}
	spans, err := spanLayout(cps, layer.Size, total, o.SpanSize)
	if err != nil {
		return invalid("%v", err)
	}

	// The spans are inflated on every core and written in order into a
	// pipe, which the tar's digest and its parse read (the paths and
	// limits checked as every layer's, the file table listed as soci's
	// builder lists it).
	pr, pw := io.Pipe()
	inflated := make(chan struct{})
	go func() {
		defer close(inflated)
		pw.CloseWithError(inflateSpans(ctx, ra, spans, zt.SpanDigests, pw, o.SpanSize))
	}()
	h := digest.SHA256.Digester()
	tarStream := io.TeeReader(pr, h.Hash())
	toc, tarSize, err := tarTable(tarStream, layerio.NewCheck(ctx), converter.LimitsFrom(ctx).MaxTOCBytes)
	if err == nil {
		_, err = io.Copy(io.Discard, tarStream)
	}
	pr.CloseWithError(err)
	<-inflated // no span is read once this returns
	if errors.Is(err, errShifted) {
		return verifyByBuilding(ctx, cs, layer, diffID, z, o, len(spans))
	}
	if err != nil {
		if ctxErr := context.Cause(ctx); ctxErr != nil {
			return Report{}, ctxErr
		}
		return invalid("%v", err)
	}
	if h.Digest() != diffID {
		return invalid("its spans inflate to %s, not the layer's tar %s", h.Digest(), diffID)
	}
	if tarSize != zt.UncompressedArchiveSize {
		return invalid("it gives the tar as %d bytes, its parse counts %d", zt.UncompressedArchiveSize, tarSize)
	}
	// The file table is compared as soci writes it: the zTOC with this
	// file table in place of its own must be the same bytes.
	rebuilt := *zt
	rebuilt.TOC = toc
	_, d, err := ztoc.Marshal(&rebuilt)
	if err != nil {
		return Report{}, err
	}
	if d.Digest != z.Digest {
		return invalid("its file table is not the layer's (%s)", firstDifference(zt.FileMetadata, toc.FileMetadata))
	}
	return Report{Spans: len(spans), Files: len(toc.FileMetadata), Bytes: total}, nil
}

// verifyByBuilding checks a zTOC (one that Go's inflate cannot replay, see
// errShifted, or a published one to adopt) by building the layer's zTOC here (zlib, from lazyconv's own
// reading of the layer: no checkpoint of the publisher's is inflated) and
// comparing bytes; the output is deterministic, so an honest one is equal.
func verifyByBuilding(ctx context.Context, cs content.Store, layer ocispec.Descriptor, diffID digest.Digest, z ocispec.Descriptor, o Options, spans int) (Report, error) {
	zt, got, err := build(ctx, cs, layer, o, true)
	if err != nil {
		return Report{}, err
	}
	if got != diffID {
		return Report{}, fmt.Errorf("layer %s is %s uncompressed, not %s: %w", layer.Digest, got, diffID, errdefs.ErrInvalidArgument)
	}
	_, d, err := ztoc.Marshal(zt)
	if err != nil {
		return Report{}, err
	}
	if d.Digest != z.Digest {
		return Report{}, fmt.Errorf("zTOC %s of layer %s: the layer's zTOC built here is %s: %w", z.Digest, layer.Digest, d.Digest, errdefs.ErrInvalidArgument)
	}
	if spans == 0 {
		spans = int(zt.MaxSpanID) + 1
	}
	return Report{Spans: spans, Files: len(zt.FileMetadata), Bytes: int64(zt.UncompressedArchiveSize), Rebuilt: true}, nil
}

// decodedSize refuses a zTOC whose decoded file table would pass the
// limits (its strings max_toc_bytes, its entries max_entries): soci's
// decoder copies every entry, and a flatbuffer may list one table, or
// point every entry at one string, any number of times. It walks the
// buffer with the generated accessors, which copy nothing.
func decodedSize(b []byte, limits converter.Limits) (err error) {
	defer func() {
		if r := recover(); r != nil {
			err = fmt.Errorf("malformed zTOC: %v", r)
		}
	}()
	root := fbs.GetRootAsZtoc(b, 0)
	if ci := root.CompressionInfo(nil); ci != nil && (ci.CheckpointsLength() > maxCheckpointBytes || ci.SpanDigestsLength() > maxCheckpointBytes/windowSize+1) {
		return fmt.Errorf("%d bytes of checkpoints and %d span digests, beyond the limit", ci.CheckpointsLength(), ci.SpanDigestsLength())
	}
	toc := root.Toc(nil)
	if toc == nil {
		return nil
	}
	if n := int64(toc.MetadataLength()); converter.Exceeds(n, limits.MaxEntries) {
		return fmt.Errorf("its file table has %d entries, beyond the limit of %d (max_entries)", n, limits.MaxEntries)
	}
	var total int64
	var fm fbs.FileMetadata
	var x fbs.Xattr
	for i := range toc.MetadataLength() {
		if !toc.Metadata(&fm, i) {
			return fmt.Errorf("file table entry %d is missing", i)
		}
		total += int64(len(fm.Name()) + len(fm.Type()) + len(fm.Linkname()) + len(fm.Uname()) + len(fm.Gname()) + len(fm.ModTime()))
		for j := range fm.XattrsLength() {
			if fm.Xattrs(&x, j) {
				total += int64(len(x.Key()) + len(x.Value()))
			}
		}
		if converter.Exceeds(total, limits.MaxTOCBytes) {
			return fmt.Errorf("its file table decodes to more than %d bytes of names and xattrs (the limit; raise max_toc_bytes to check it)", limits.MaxTOCBytes)
		}
	}
	return nil
}

// unmarshal parses a zTOC; the flatbuffers reader panics on some malformed
// input, which is an error here.
func unmarshal(b []byte) (zt *ztoc.Ztoc, err error) {
	defer func() {
		if r := recover(); r != nil {
			zt, err = nil, fmt.Errorf("malformed zTOC: %v", r)
		}
	}()
	return ztoc.Unmarshal(bytes.NewReader(b))
}

// Soci's gzip checkpoint blob: a 4-byte count and the 8-byte span size,
// then per checkpoint the compressed offset (8 bytes), the uncompressed
// offset (8), the bits of the byte before (1) and the 32 KiB window, all
// little-endian. A version 1 blob leaves out the first checkpoint (after a
// 10-byte gzip header, with an empty window).
const (
	checkpointsHeader = 4 + 8
	windowSize        = 32 << 10
	packedCheckpoint  = 8 + 8 + 1 + windowSize
)

// checkpoint is one gzip checkpoint: inflating may start there.
type checkpoint struct {
	in, out int64 // compressed offset of the first whole byte, uncompressed offset
	bits    uint  // bits (0-7) of the byte before in still to read
	window  []byte
}

// parseCheckpoints reads a checkpoint blob in Go (soci's C reader is given
// none of what a publisher wrote).
func parseCheckpoints(b []byte) (int64, []checkpoint, error) {
	if len(b) < checkpointsHeader {
		return 0, nil, fmt.Errorf("%d bytes, shorter than the header", len(b))
	}
	n := int64(int32(binary.LittleEndian.Uint32(b)))
	span := int64(binary.LittleEndian.Uint64(b[4:]))
	body := int64(len(b) - checkpointsHeader)
	var out []checkpoint
	switch {
	case n >= 1 && body == n*packedCheckpoint:
	case n >= 1 && body == (n-1)*packedCheckpoint:
		out = append(out, checkpoint{in: 10, window: make([]byte, windowSize)})
	default:
		return 0, nil, fmt.Errorf("%d checkpoints do not fill %d bytes", n, len(b))
	}
	for p := b[checkpointsHeader:]; len(p) > 0; p = p[packedCheckpoint:] {
		c := checkpoint{in: int64(binary.LittleEndian.Uint64(p)), out: int64(binary.LittleEndian.Uint64(p[8:])), bits: uint(p[16]), window: p[17:packedCheckpoint]}
		if c.bits > 7 {
			return 0, nil, fmt.Errorf("a checkpoint starts %d bits into a byte", c.bits)
		}
		out = append(out, c)
	}
	return span, out, nil
}

// uncompressedSize is the length of the tar of the gzip blob ra (size
// bytes): at least covered (what the zTOC covers), and equal modulo 2^32 to
// the size the gzip trailer gives; the tar may run past covered by at most
// maxTrailingBytes.
func uncompressedSize(ra io.ReaderAt, size, covered int64) (int64, error) {
	if size < 18 {
		return 0, fmt.Errorf("the layer is too short for gzip")
	}
	var trailer [4]byte
	if n, err := ra.ReadAt(trailer[:], size-4); n < len(trailer) {
		return 0, err
	}
	isize := int64(binary.LittleEndian.Uint32(trailer[:]))
	extra := (isize - covered) & (1<<32 - 1)
	if extra > maxTrailingBytes {
		return 0, fmt.Errorf("the gzip trailer gives %d bytes (modulo 2^32), %d more than the zTOC covers, beyond %d", isize, extra, maxTrailingBytes)
	}
	return covered + extra, nil
}

// span is one checkpoint's share of a layer.
type span struct {
	id           int
	from         checkpoint
	cStart, cEnd int64 // compressed bytes (the first holding the checkpoint's bits, if any)
	uStart, uEnd int64 // uncompressed bytes
}

// spanLayout lists the spans of the checkpoints cps over a blob of size
// bytes whose tar is total bytes (as soci's zinfo does), and refuses a
// layout that does not tile both from the start or whose spans are beyond
// what soci's builder makes at spanSize.
func spanLayout(cps []checkpoint, size, total, spanSize int64) ([]span, error) {
	out := make([]span, len(cps))
	for i, c := range cps {
		s := span{id: i, from: c, cStart: c.in, cEnd: size, uStart: c.out, uEnd: total}
		if c.bits != 0 {
			s.cStart--
		}
		if i+1 < len(cps) {
			s.cEnd, s.uEnd = cps[i+1].in, cps[i+1].out
		}
		switch {
		case i == 0 && s.uStart != 0:
			return nil, fmt.Errorf("the first span starts at uncompressed byte %d", s.uStart)
		case s.cStart < 0 || s.cEnd > size || s.cEnd <= s.cStart:
			return nil, fmt.Errorf("span %d covers compressed bytes %d to %d of %d", i, s.cStart, s.cEnd, size)
		case s.uEnd < s.uStart, s.uEnd-s.uStart > spanSize+maxSpanSlack, s.cEnd-s.cStart > spanSize+maxSpanSlack:
			return nil, fmt.Errorf("span %d (uncompressed bytes %d to %d, %d compressed bytes) is not a span of %d", i, s.uStart, s.uEnd, s.cEnd-s.cStart, spanSize)
		}
		out[i] = s
	}
	return out, nil
}

// inflateSpans inflates each span from its checkpoint (soci's zlib code,
// as the snapshotter does), on as many workers as there are cores, checks
// each span's compressed digest, and writes the spans to w in order.
func inflateSpans(ctx context.Context, ra io.ReaderAt, spans []span, digests []digest.Digest, w io.Writer, spanSize int64) error {
	type result struct {
		data []byte
		err  error
	}
	// Spans in memory (inflating or waiting to be written) hold up to twice
	// a span each (compressed and inflated): as many as there are cores,
	// within maxInflight.
	workers := max(1, min(runtime.GOMAXPROCS(0), int(maxInflight/(2*(spanSize+maxSpanSlack)))))
	slots := make(chan struct{}, workers)
	results := make([]chan result, len(spans))
	for i := range results {
		results[i] = make(chan result, 1)
	}
	ctx, cancel := context.WithCancel(ctx)
	var running sync.WaitGroup
	defer func() {
		cancel()
		running.Wait() // every span inflated or abandoned before the blob closes
	}()
	running.Add(1)
	go func() {
		defer running.Done()
		for i, s := range spans {
			select {
			case slots <- struct{}{}:
			case <-ctx.Done():
				return
			}
			running.Add(1)
			go func() {
				defer running.Done()
				data, err := inflateSpan(ra, s, digests[i])
				results[i] <- result{data, err}
			}()
		}
	}()
	for i := range spans {
		var r result
		select {
		case r = <-results[i]:
		case <-ctx.Done():
			return context.Cause(ctx)
		}
		if r.err != nil {
			return r.err
		}
		_, err := w.Write(r.data)
		<-slots
		if err != nil {
			return err
		}
	}
	return nil
}

// inflateSpan reads a span's compressed bytes, checks their digest and
// inflates them from the span's checkpoint with Go's inflater (raw
// deflate, the checkpoint's window as its dictionary; the standard
// library's, which hands over a block's output when its input ends after
// it, where klauspost's wants the next block's header), which stops at the
// end of its input: the span must inflate to its length from its own bytes
// alone, as soci-snapshotter inflates it.
func inflateSpan(ra io.ReaderAt, s span, want digest.Digest) ([]byte, error) {
	buf := make([]byte, s.cEnd-s.cStart)
	if n, err := ra.ReadAt(buf, s.cStart); n < len(buf) {
		return nil, fmt.Errorf("reading span %d: %w", s.id, err)
	}
	if got := digest.FromBytes(buf); got != want {
		return nil, fmt.Errorf("span %d's compressed bytes are %s, the zTOC says %s", s.id, got, want)
	}
	if b := s.from.bits; b != 0 { // start b bits from the end of the first byte
		for i := range buf {
			next := byte(0)
			if i+1 < len(buf) {
				next = buf[i+1]
			}
			buf[i] = buf[i]>>(8-b) | next<<b
		}
	}
	out := make([]byte, s.uEnd-s.uStart)
	in := &spanInput{b: buf}
	zr := flate.NewReaderDict(in, s.from.window)
	defer zr.Close()
	_, err := io.ReadFull(zr, out)
	if in.stored && s.from.bits != 0 {
		// A stored block aligns to a byte boundary of the stream, which the
		// shifted bytes have moved: Go's inflate did not read what zlib
		// reads from this checkpoint.
		return nil, errShifted
	}
	if err != nil {
		return nil, fmt.Errorf("span %d does not inflate from its checkpoint to its %d bytes: %v", s.id, len(out), err)
	}
	return out, nil
}

// errShifted is a span whose checkpoint starts mid-byte and which holds a
// stored block: it cannot be inflated in Go as zlib inflates it.
var errShifted = errors.New("a stored block in a span starting mid-byte")

// spanInput is a span's compressed bytes for Go's inflate, which reads
// them a byte at a time (ReadByte) but for a stored block's length and
// data (Read): stored says it met one within the span.
type spanInput struct {
	b      []byte
	i      int
	stored bool
}

func (r *spanInput) ReadByte() (byte, error) {
	if r.i == len(r.b) {
		return 0, io.EOF
	}
	r.i++
	return r.b[r.i-1], nil
}

func (r *spanInput) Read(p []byte) (int, error) {
	if r.i == len(r.b) {
		// Past the span: the padding bits of its last byte read as a
		// block header, once its output is whole.
		return 0, io.EOF
	}
	r.stored = true
	n := copy(p, r.b[r.i:])
	r.i += n
	return n, nil
}

// firstDifference names the first entry where two file tables differ.
func firstDifference(published, actual []ztoc.FileMetadata) string {
	for i := range min(len(published), len(actual)) {
		p, a := published[i], actual[i]
		if p.Name != a.Name || p.Type != a.Type || p.UncompressedOffset != a.UncompressedOffset || p.UncompressedSize != a.UncompressedSize ||
			p.TarHeaderOffset != a.TarHeaderOffset || p.Linkname != a.Linkname || p.Mode != a.Mode || p.UID != a.UID || p.GID != a.GID {
			return fmt.Sprintf("entry %d is %q (%s, %d bytes at %d), the tar's %q (%s, %d bytes at %d)", i, p.Name, p.Type, p.UncompressedSize,
				p.UncompressedOffset, a.Name, a.Type, a.UncompressedSize, a.UncompressedOffset)
		}
	}
	if len(published) != len(actual) {
		return fmt.Sprintf("%d entries, the tar has %d", len(published), len(actual))
	}
	return "an entry's names, times, devices or xattrs differ"
}
