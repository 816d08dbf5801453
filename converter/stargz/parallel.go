package stargz

import (
	"bytes"
	"context"
	"fmt"
	"hash"
	"io"
	"sync"

	"github.com/containerd/stargz-snapshotter/estargz"
	"github.com/opencontainers/go-digest"
	"golang.org/x/sync/semaphore"
)

// parallelCompressor lets estargz's (sequential) lossless writer lay out a
// layer while the gzip streams are compressed concurrently: the output is
// byte for byte what gzipCompressor (or the sequential zstd:chunked compressor) writes, but one layer uses every core.
//
// estargz starts a gzip stream per file chunk and records, as each chunk's
// offset, how many compressed bytes were written before it. Here each stream
// writes a single placeholder byte to estargz's writer, so the offsets it
// records are stream indexes; streams are compressed by a bounded pool and
// written to the real output in order, and the TOC's offsets are mapped to
// real ones before the TOC is written.
type parallelCompressor struct {
	// compress writes src as one compressed stream to dst (flushed: as
	// flushed before it was closed); it must be safe for concurrent use.
	compress func(dst *bytes.Buffer, src []byte, flushed bool) error
	// toc writes the TOC and footer at offset off, and returns the TOC digest.
	toc func(w io.Writer, off int64, toc tocSource, diffHash hash.Hash) (digest.Digest, error)
	// annotations are the format's own, known once the TOC is written.
	annotations func() map[string]string

	out io.Writer // the real destination

	next    int64               // index of the next stream
	queue   chan *streamResult  // in stream order, up to maxQueuedStreams
	budget  *semaphore.Weighted // uncompressed bytes of the queued streams, up to maxQueuedBytes
	slots   chan struct{}       // compression workers
	offsets streamOffsets       // compressed start offset of each stream
	written chan error          // the ordered writer's outcome
	free    chan *bytes.Buffer  // spare stream buffers
	pos     int64
	once    sync.Once
	err     error
}

type streamResult struct {
	done   chan struct{}
	data   *bytes.Buffer
	err    error
	weight int64 // of the budget, released once written
}

// A layer of many small files is many small streams: the layout goes on
// while up to maxQueuedStreams of them, and maxQueuedBytes of their input
// and output, wait for a worker or for the ordered writer, so that neither
// the layout nor the workers wait for each other stream by stream. A
// stream larger than the budget takes all of it.
const (
	maxQueuedStreams = 512
	maxQueuedBytes   = 8 << 20
)

// getBuffer takes a stream buffer (a chunk, up to 4 MiB, or its compressed
// form) from the compressor's free list. The list is bounded by the streams
// that can be in flight, unlike a sync.Pool, so memory stays flat and small
// however long the layer.
func (c *parallelCompressor) getBuffer() *bytes.Buffer {
	select {
	case b := <-c.free:
		b.Reset()
		return b
	default:
		return new(bytes.Buffer)
	}
}

// fitted returns b, or its bytes in a buffer of their size when b is much
// larger (a spare that held a chunk now holding a small file): what waits
// in the queue is what the budget counts.
func (c *parallelCompressor) fitted(b *bytes.Buffer) *bytes.Buffer {
	if b.Cap() <= 2*b.Len()+64<<10 {
		return b
	}
	small := bytes.NewBuffer(make([]byte, 0, b.Len()))
	small.Write(b.Bytes())
	c.putBuffer(b)
	return small
}

func (c *parallelCompressor) putBuffer(b *bytes.Buffer) {
	select {
	case c.free <- b:
	default: // enough spares already
	}
}

// newParallelGzip is the eStargz (gzip) parallel compressor.
func newParallelGzip(streams gzipStreams, workers int, out io.Writer) *parallelCompressor {
	return newParallelCompressor(workers, out, streams.compress,
		func(w io.Writer, off int64, toc tocSource, diffHash hash.Hash) (digest.Digest, error) {
			return writeGzipTOC(w, off, streams, toc, diffHash)
		},
		func() map[string]string { return nil })
}

func newParallelCompressor(workers int, out io.Writer,
	compress func(dst *bytes.Buffer, src []byte, flushed bool) error,
	toc func(io.Writer, int64, tocSource, hash.Hash) (digest.Digest, error),
	annotations func() map[string]string) *parallelCompressor {
	c := &parallelCompressor{
		compress: compress, toc: toc, annotations: annotations, out: out,
		queue: make(chan *streamResult, maxQueuedStreams), budget: semaphore.NewWeighted(int64(workers+1) * maxQueuedBytes),
		slots: make(chan struct{}, workers), written: make(chan error, 1),
		free: make(chan *bytes.Buffer, 2*workers),
	}
	go c.writeInOrder()
	return c
}

// writeInOrder writes compressed streams in order, noting where each starts.
func (c *parallelCompressor) writeInOrder() {
	var err error
	for r := range c.queue {
		<-r.done
		c.offsets.add(c.pos)
		if err == nil {
			err = r.err
		}
		if err == nil {
			var n int
			n, err = c.out.Write(r.data.Bytes())
			c.pos += int64(n)
		}
		c.putBuffer(r.data)
		c.budget.Release(r.weight)
	}
	c.written <- err
}

// Writer opens stream number c.next: one placeholder byte, so that estargz's
// offsets count streams.
func (c *parallelCompressor) Writer(w io.Writer) (estargz.WriteFlushCloser, error) {
	if _, err := w.Write([]byte{0}); err != nil {
		return nil, err
	}
	c.next++
	return &bufferedStream{c: c, buf: c.getBuffer()}, nil
}

type bufferedStream struct {
	c       *parallelCompressor
	buf     *bytes.Buffer
	flushed bool
	closed  bool
}

func (s *bufferedStream) Write(p []byte) (int, error) {
	return s.buf.Write(p)
}

// Flush is recorded: estargz flushes a stream just before closing it when a
// chunk starts, and the compressed bytes must be the same.
func (s *bufferedStream) Flush() error {
	s.flushed = true
	return nil
}

// Close queues the stream for a compression worker (waiting while the queue
// is full).
func (s *bufferedStream) Close() error {
	if s.closed {
		return nil
	}
	s.closed = true
	in, flushed := s.c.fitted(s.buf), s.flushed
	s.buf = nil
	// The input, and its compressed form to come (about as large, at most).
	r := &streamResult{done: make(chan struct{}), weight: min(2*int64(in.Len())+1<<10, maxQueuedBytes)}
	_ = s.c.budget.Acquire(context.Background(), r.weight) // never fails without a deadline
	s.c.queue <- r
	go func() {
		s.c.slots <- struct{}{}
		defer func() { <-s.c.slots; close(r.done) }()
		out := s.c.getBuffer()
		r.err = s.c.compress(out, in.Bytes(), flushed)
		r.data = s.c.fitted(out)
		s.c.putBuffer(in)
	}()
	return nil
}

// WriteTOCAndFooter runs when estargz closes: it waits for every stream to be
// written, turns the TOC's stream indexes into offsets, and writes the TOC
// and footer to the real output.
func (c *parallelCompressor) WriteTOCAndFooter(_ io.Writer, _ int64, toc tocSource, diffHash hash.Hash) (digest.Digest, error) {
	if err := c.finish(); err != nil {
		return "", err
	}
	return c.toc(c.out, c.pos, offsetSource{toc, c.offsets}, diffHash)
}

// finish stops accepting streams and waits for the ordered writer.
func (c *parallelCompressor) finish() error {
	c.once.Do(func() {
		close(c.queue)
		c.err = <-c.written
	})
	return c.err
}

// abort releases the writer goroutine after a failed conversion.
func (c *parallelCompressor) abort() { _ = c.finish() }

func (c *parallelCompressor) Annotations() map[string]string { return c.annotations() }

// offsetSource maps the TOC's stream indexes to the streams' offsets.
type offsetSource struct {
	tocSource
	offsets streamOffsets
}

// streamOffsets is a list of offsets in pages of a fixed size: 8 bytes per
// stream, never copied to grow (a slice's doubling would hold up to twice
// that, and both copies while it grows).
type streamOffsets struct {
	pages [][]int64
	n     int64
}

const offsetsPage = 1 << 14

func (s *streamOffsets) add(off int64) {
	if s.n%offsetsPage == 0 {
		s.pages = append(s.pages, make([]int64, 0, offsetsPage))
	}
	last := len(s.pages) - 1
	s.pages[last] = append(s.pages[last], off)
	s.n++
}

// at is the i-th offset; ok is false beyond the list.
func (s *streamOffsets) at(i int64) (int64, bool) {
	if i < 0 || i >= s.n {
		return 0, false
	}
	return s.pages[i/offsetsPage][i%offsetsPage], true
}

func (o offsetSource) Entries(fn func(*estargz.TOCEntry) error) error {
	return o.tocSource.Entries(func(e *estargz.TOCEntry) error {
		if e.ChunkDigest != "" { // an entry with data: a chunk, or a reg's first
			off, ok := o.offsets.at(e.Offset)
			if !ok {
				return fmt.Errorf("TOC entry %q: stream %d was never written", e.Name, e.Offset)
			}
			e.Offset = off
		}
		return fn(e)
	})
}

// writeStream writes src through a fresh stream zw and closes it (flushing
// it first when the layout flushed it).
func writeStream(zw estargz.WriteFlushCloser, src []byte, flushed bool) error {
	_, err := zw.Write(src)
	if err == nil && flushed {
		err = zw.Flush()
	}
	if cerr := zw.Close(); err == nil {
		err = cerr
	}
	return err
}
