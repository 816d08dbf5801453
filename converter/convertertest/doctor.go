package convertertest

import (
	"bytes"
	"encoding/binary"
	"encoding/json"
	"errors"
	"fmt"

	"github.com/containerd/stargz-snapshotter/estargz"
	"github.com/containerd/stargz-snapshotter/estargz/zstdchunked"
	"github.com/klauspost/compress/zstd"
	"github.com/opencontainers/go-digest"

	"github.com/lazyconv/lazyconv/labels"
)

// DoctorZstdTOC rewrites the TOC of the zstd:chunked layer blob with edit,
// keeping its payload, as an attacker who can push would: the new layer and
// the descriptor annotations consistent with it (TOC digest, manifest
// checksum and position), so that only a check of the TOC against the
// payload tells.
func DoctorZstdTOC(blob []byte, uncompressedSize string, edit func(*estargz.JTOC)) ([]byte, map[string]string, error) {
	if len(blob) < zstdchunked.FooterSize+8 {
		return nil, nil, errors.New("no zstd:chunked footer")
	}
	footer := blob[len(blob)-zstdchunked.FooterSize:]
	tocOff := int64(binary.LittleEndian.Uint64(footer[0:8]))
	csize := int64(binary.LittleEndian.Uint64(footer[8:16]))
	dec, err := zstd.NewReader(nil)
	if err != nil {
		return nil, nil, err
	}
	defer dec.Close()
	raw, err := dec.DecodeAll(blob[tocOff:tocOff+csize], nil)
	if err != nil {
		return nil, nil, err
	}
	var toc estargz.JTOC
	if err := json.Unmarshal(raw, &toc); err != nil {
		return nil, nil, err
	}
	edit(&toc)
	js, err := json.Marshal(&toc)
	if err != nil {
		return nil, nil, err
	}
	enc, err := zstd.NewWriter(nil)
	if err != nil {
		return nil, nil, err
	}
	ctoc := enc.EncodeAll(js, nil)
	skippable := []byte{0x50, 0x2a, 0x4d, 0x18}
	payloadEnd := tocOff - 8
	var out bytes.Buffer
	out.Write(blob[:payloadEnd])
	out.Write(binary.LittleEndian.AppendUint32(skippable, uint32(len(ctoc))))
	out.Write(ctoc)
	nf := make([]byte, zstdchunked.FooterSize)
	binary.LittleEndian.PutUint64(nf, uint64(payloadEnd+8))
	binary.LittleEndian.PutUint64(nf[8:], uint64(len(ctoc)))
	binary.LittleEndian.PutUint64(nf[16:], uint64(len(js)))
	copy(nf[24:], footer[24:])
	out.Write(binary.LittleEndian.AppendUint32(skippable, uint32(len(nf))))
	out.Write(nf)
	return out.Bytes(), map[string]string{
		labels.TOCDigestAnnotation:             digest.FromBytes(js).String(),
		labels.UncompressedSizeAnnotation:      uncompressedSize,
		zstdchunked.ManifestChecksumAnnotation: digest.FromBytes(ctoc).String(),
		zstdchunked.ManifestPositionAnnotation: fmt.Sprintf("%d:%d:%d:1", payloadEnd+8, len(ctoc), len(js)),
	}, nil
}
