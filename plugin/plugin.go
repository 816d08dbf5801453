// Package plugin registers lazyconv's containerd plugin, the
// io.containerd.grpc.v1 "lazyconv" service on containerd's own socket, and
// owns its configuration type. Import it for its side effects into a
// containerd main, as cmd/containerd-lazyconv does.
package plugin

import (
	"context"
	"fmt"
	"path/filepath"

	diffapi "github.com/containerd/containerd/api/services/diff/v1"
	imagesapi "github.com/containerd/containerd/api/services/images/v1"
	containerd "github.com/containerd/containerd/v2/client"
	"github.com/containerd/containerd/v2/core/content"
	"github.com/containerd/containerd/v2/core/events"
	"github.com/containerd/containerd/v2/core/leases"
	"github.com/containerd/containerd/v2/core/metadata"
	"github.com/containerd/containerd/v2/core/snapshots"
	"github.com/containerd/containerd/v2/plugins"
	srv "github.com/containerd/containerd/v2/plugins/services"
	"github.com/containerd/errdefs"
	"github.com/containerd/log"
	"github.com/containerd/plugin"
	"github.com/containerd/plugin/registry"
	bolt "go.etcd.io/bbolt"

	"github.com/lazyconv/lazyconv/format"
	"github.com/lazyconv/lazyconv/service"
)

// Config is the plugin's section of containerd's config.toml
// ([plugins.'io.containerd.grpc.v1.lazyconv']): one flat table, read by
// service.ParseConfig (unknown keys are refused when the plugin starts).
type Config map[string]any

// Version is reported by Capabilities; cmd/containerd-lazyconv sets it.
var Version = "dev"

func init() {
	defaults := Config(service.DefaultConfig().TOML())
	registry.Register(&plugin.Registration{
		Type:     plugins.GRPCPlugin,
		ID:       "lazyconv",
		Requires: []plugin.Type{plugins.MetadataPlugin, plugins.LeasePlugin, plugins.ServicePlugin, plugins.EventPlugin, format.PluginType},
		Config:   &defaults,
		InitFn:   initService,
	})
}

func initService(ic *plugin.InitContext) (any, error) {
	raw, ok := ic.Config.(*Config)
	if !ok {
		return nil, fmt.Errorf("lazyconv: configuration of type %T, not %T: %w", ic.Config, &Config{}, errdefs.ErrInvalidArgument)
	}
	cfg, err := service.ParseConfig(*raw)
	if err != nil {
		return nil, fmt.Errorf("lazyconv configuration: %w", err)
	}
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
	loaded, err := loadedFormats(ic)
	if err != nil {
		return nil, err
	}
	opts := []service.Option{service.WithScratchDir(filepath.Join(ic.Properties[plugins.PropertyRootDir], "scratch")), service.WithFormats(loaded)}
	sns, snOK := svcs[srv.SnapshotsService].(map[string]snapshots.Snapshotter)
	diffClient, diffOK := svcs[srv.DiffService].(diffapi.DiffClient)
	if snOK && diffOK {
		differ := containerd.NewDiffServiceFromClient(diffClient)
		opts = append(opts, service.WithSnapshots(func(name string) (snapshots.Snapshotter, error) {
			if sn, ok := sns[name]; ok {
				return sn, nil
			}
			return nil, fmt.Errorf("snapshotter %q is not loaded: %w", name, errdefs.ErrNotFound)
		}, differ))
	} else {
		log.G(ic.Context).Warn("lazyconv: no snapshots or diff service: layers whose blobs are gone cannot be rebuilt")
	}
	svc, err := service.New(cs, containerd.NewImageStoreFromClient(ic2), lm, cfg, Version, opts...)
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
	if len(cfg.Rules) > 0 {
		ev, err := ic.GetSingle(plugins.EventPlugin)
		if err != nil {
			return nil, err
		}
		exchange, ok := ev.(interface {
			events.Subscriber
			events.Publisher
		})
		if !ok {
			return nil, fmt.Errorf("lazyconv: containerd's event plugin cannot be subscribed to: %w", errdefs.ErrNotImplemented)
		}
		// The rules run for the life of the daemon, with its logger.
		if _, err := svc.StartRules(log.WithLogger(context.Background(), log.G(ic.Context)), service.RulesEnv{
			Events: exchange, Publisher: exchange,
			Namespaces: func(ctx context.Context) ([]string, error) { return namespaceNames(ctx, db) },
		}); err != nil {
			return nil, err
		}
		log.G(ic.Context).Infof("lazyconv: %d conversion rules watch image events", len(cfg.Rules))
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

// loadedFormats is the format table the image-converter plugins made: the
// formats that initialized, those skipped (with the reason), and those
// disabled_plugins removed (registered, but never initialized).
func loadedFormats(ic *plugin.InitContext) (format.Loaded, error) {
	out := format.Loaded{Skipped: map[string]error{}}
	for _, f := range format.Registered() {
		p := ic.Plugins().Get(format.PluginType, f.Name)
		if p == nil {
			out.Disabled = append(out.Disabled, f.Name)
			continue
		}
		inst, err := p.Instance()
		switch {
		case plugin.IsSkipPlugin(err):
			out.Skipped[f.Name] = err
			if skipped, ok := inst.(*format.Format); ok {
				out.Unavailable = append(out.Unavailable, skipped)
			}
		case err != nil:
			return out, fmt.Errorf("format plugin %s: %w", format.URI(f.Name), err)
		default:
			out.Formats = append(out.Formats, inst.(*format.Format))
		}
	}
	return out, nil
}
