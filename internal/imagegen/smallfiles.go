package imagegen

import (
	"archive/tar"
	"fmt"
	"io"
	"io/fs"
	"math/rand"
	"os"
	"path/filepath"
	"strings"
	"time"
)

// WriteSmallFilesTar writes a tar of files small files, laid out as a
// node_modules tree (packages of a dozen files in a few directories each),
// whose contents are slices of GOROOT's Go sources: real text, which
// compresses as source code does. The same prefix and count give the same
// tar.
func WriteSmallFilesTar(w io.Writer, prefix string, files int) error {
	pool, err := sourcePool(8 << 20)
	if err != nil {
		return err
	}
	rng := rand.New(rand.NewSource(int64(files)))
	tw := tar.NewWriter(w)
	mtime := time.Unix(1700000000, 0)
	dir := func(name string) error {
		return tw.WriteHeader(&tar.Header{Name: name + "/", Typeflag: tar.TypeDir, Mode: 0o755, ModTime: mtime})
	}
	if err := dir(prefix); err != nil {
		return err
	}
	for pkg, written := 0, 0; written < files; pkg++ {
		base := fmt.Sprintf("%s/node_modules/pkg-%d", prefix, pkg)
		for _, d := range []string{base, base + "/lib", base + "/dist"} {
			if err := dir(d); err != nil {
				return err
			}
		}
		for i := 0; i < 12 && written < files; i, written = i+1, written+1 {
			size := 16 + rng.Intn(768) // mostly under 1 KiB, one in eight larger
			if rng.Intn(8) == 0 {
				size += rng.Intn(8192)
			}
			off := rng.Intn(len(pool) - size)
			name := fmt.Sprintf("%s/%s/file-%d.js", base, []string{"lib", "dist", "."}[i%3], i)
			h := &tar.Header{Name: filepath.Clean(name), Typeflag: tar.TypeReg, Mode: 0o644, Size: int64(size), ModTime: mtime}
			if err := tw.WriteHeader(h); err != nil {
				return err
			}
			if _, err := tw.Write(pool[off : off+size]); err != nil {
				return err
			}
		}
	}
	return tw.Close()
}

// sourcePool reads up to limit bytes of GOROOT's .go files.
func sourcePool(limit int) ([]byte, error) {
	root, err := Goroot()
	if err != nil {
		return nil, err
	}
	var pool []byte
	err = filepath.WalkDir(filepath.Join(root, "src"), func(path string, d fs.DirEntry, err error) error {
		if err != nil || d.IsDir() || !strings.HasSuffix(path, ".go") {
			return nil
		}
		if len(pool) >= limit {
			return filepath.SkipAll
		}
		b, err := os.ReadFile(path)
		if err == nil {
			pool = append(pool, b...)
		}
		return nil
	})
	if len(pool) < 64<<10 {
		return nil, fmt.Errorf("GOROOT %s has too little Go source", root)
	}
	return pool, err
}
