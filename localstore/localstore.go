// Package localstore opens containerd's own metadata database (bolt) over a
// local content store, in-process: real namespaces, labels, leases and garbage
// collection with no daemon. It is what `lazyconv --root DIR` runs on.
package localstore

import (
	"context"
	"fmt"
	"os"
	"path/filepath"
	"time"

	containerd "github.com/containerd/containerd/v2/client"
	"github.com/containerd/containerd/v2/core/content"
	"github.com/containerd/containerd/v2/core/images"
	"github.com/containerd/containerd/v2/core/leases"
	"github.com/containerd/containerd/v2/core/metadata"
	"github.com/containerd/containerd/v2/pkg/gc"
	"github.com/containerd/containerd/v2/plugins/content/local"
	"github.com/containerd/errdefs"
	bolt "go.etcd.io/bbolt"
)

// Store is an open local store.
type Store struct {
	root   string
	bolt   *bolt.DB
	db     *metadata.DB
	client *containerd.Client
}

// DefaultRoot is where the CLI keeps its store without --root:
// $XDG_DATA_HOME/lazyconv, or ~/.local/share/lazyconv.
func DefaultRoot() string {
	if d := os.Getenv("XDG_DATA_HOME"); d != "" {
		return filepath.Join(d, "lazyconv")
	}
	if home, err := os.UserHomeDir(); err == nil {
		return filepath.Join(home, ".local", "share", "lazyconv")
	}
	return filepath.Join(os.TempDir(), "lazyconv")
}

// Open opens (creating if needed) the store under root. Only one process can
// hold a store open; another gets ErrUnavailable after a short wait.
func Open(ctx context.Context, root string) (*Store, error) {
	if err := os.MkdirAll(root, 0o711); err != nil {
		return nil, err
	}
	cs, err := local.NewStore(filepath.Join(root, "content"))
	if err != nil {
		return nil, fmt.Errorf("opening content store: %w", err)
	}
	dbPath := filepath.Join(root, "metadata.db")
	bdb, err := bolt.Open(dbPath, 0o644, &bolt.Options{Timeout: 5 * time.Second})
	if err != nil {
		return nil, fmt.Errorf("opening %s (is another lazyconv using this root?): %v: %w", dbPath, err, errdefs.ErrUnavailable)
	}
	db := metadata.NewDB(bdb, cs, nil)
	if err := db.Init(ctx); err != nil {
		bdb.Close()
		return nil, fmt.Errorf("initialising %s: %w", dbPath, err)
	}
	client, err := containerd.New("", containerd.WithServices(
		containerd.WithContentStore(db.ContentStore()),
		containerd.WithImageStore(metadata.NewImageStore(db)),
		containerd.WithLeasesService(metadata.NewLeaseManager(db)),
	))
	if err != nil {
		bdb.Close()
		return nil, err
	}
	return &Store{root: root, bolt: bdb, db: db, client: client}, nil
}

// Root is the store's directory.
func (s *Store) Root() string { return s.root }

// Client is a containerd client over the store's in-process services (content,
// images, leases): Import, Export and WithLease work on it as on a daemon.
func (s *Store) Client() *containerd.Client { return s.client }

// ContentStore is the metadata-backed (namespaced, labelled) content store.
func (s *Store) ContentStore() content.Store { return s.db.ContentStore() }

// ImageStore is the image store.
func (s *Store) ImageStore() images.Store { return s.client.ImageService() }

// LeaseManager is the lease manager.
func (s *Store) LeaseManager() leases.Manager { return s.client.LeasesService() }

// GarbageCollect removes everything no root, lease or reference keeps, as
// containerd's scheduler does after a lease is deleted.
func (s *Store) GarbageCollect(ctx context.Context) (gc.Stats, error) {
	return s.db.GarbageCollect(ctx)
}

// Close closes the database.
func (s *Store) Close() error { return s.bolt.Close() }
