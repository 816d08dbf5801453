// Package plugin registers lazyconv's containerd plugins: the
// io.containerd.grpc.v1 "lazyconv" service on containerd's own socket, and
// one io.containerd.image-converter.v1 plugin per layer format. Import it for
// its side effects into a containerd main, as cmd/containerd-lazyconv does.
package plugin

import (
	"context"
	"fmt"

	imagesapi "github.com/containerd/containerd/api/services/images/v1"
	containerd "github.com/containerd/containerd/v2/client"
	"github.com/containerd/containerd/v2/core/content"
	"github.com/containerd/containerd/v2/core/leases"
	"github.com/containerd/containerd/v2/core/metadata"
	"github.com/containerd/containerd/v2/plugins"
	srv "github.com/containerd/containerd/v2/plugins/services"
	"github.com/containerd/errdefs"
	"github.com/containerd/log"
	"github.com/containerd/plugin"
	"github.com/containerd/plugin/registry"
	bolt "go.etcd.io/bbolt"

	"github.com/lazyconv/lazyconv/service"
)

// ImageConverterPlugin is the plugin type of layer converters: one plugin per
// format, whose instance is a converter.LayerConverter with default options.
const ImageConverterPlugin plugin.Type = "io.containerd.image-converter.v1"

// Version is reported by Capabilities; cmd/containerd-lazyconv sets it.
var Version = "dev"

func init() {
	defaults := service.DefaultConfig()
	registry.Register(&plugin.Registration{
		Type:     plugins.GRPCPlugin,
		ID:       "lazyconv",
		Requires: []plugin.Type{plugins.MetadataPlugin, plugins.LeasePlugin, plugins.ServicePlugin},
		Config:   &defaults,
		InitFn:   initService,
	})
	for _, format := range service.Formats {
		registry.Register(&plugin.Registration{
			Type: ImageConverterPlugin,
			ID:   format,
			InitFn: func(*plugin.InitContext) (any, error) {
				lc, err := service.LayerConverter(format, service.DefaultConfig())
				if errdefs.IsUnavailable(err) {
					return nil, fmt.Errorf("%v: %w", err, plugin.ErrSkipPlugin)
				}
				if err == nil && lc == nil {
					return nil, fmt.Errorf("%s converts per request (it needs a record): %w", format, plugin.ErrSkipPlugin)
				}
				return lc, err
			},
		})
	}
}

func initService(ic *plugin.InitContext) (any, error) {
	cfg := ic.Config.(*service.Config)
	m, err := ic.GetSingle(plugins.MetadataPlugin)
	if err != nil {
		return nil, err
	}
	db := m.(*metadata.DB)
	l, err := ic.GetSingle(plugins.LeasePlugin)
	if err != nil {
		return nil, err
	}
	lm := l.(leases.Manager)
	svcs, err := ic.GetByType(plugins.ServicePlugin)
	if err != nil {
		return nil, err
	}
	cs, ok := svcs[srv.ContentService].(content.Store)
	if !ok {
		return nil, fmt.Errorf("content service not available: %w", plugin.ErrSkipPlugin)
	}
	ic2, ok := svcs[srv.ImagesService].(imagesapi.ImagesClient)
	if !ok {
		return nil, fmt.Errorf("images service not available: %w", plugin.ErrSkipPlugin)
	}
	svc, err := service.New(cs, containerd.NewImageStoreFromClient(ic2), lm, *cfg, Version)
	if err != nil {
		return nil, err
	}
	nss, err := namespaceNames(ic.Context, db)
	if err != nil {
		return nil, err
	}
	n, err := service.RecoverLeases(ic.Context, lm, nss)
	if err != nil {
		return nil, err
	}
	if n > 0 {
		log.G(ic.Context).Infof("lazyconv: dropped %d leases of conversions interrupted by a previous exit", n)
	}
	return svc, nil
}

func namespaceNames(ctx context.Context, db *metadata.DB) ([]string, error) {
	var nss []string
	err := db.View(func(tx *bolt.Tx) error {
		var err error
		nss, err = metadata.NewNamespaceStore(tx).List(ctx)
		return err
	})
	return nss, err
}
