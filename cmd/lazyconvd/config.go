package main

import (
	"context"
	"errors"
	"fmt"
	"os"
	"os/user"
	"strconv"
	"strings"

	"github.com/containerd/containerd/v2/pkg/identifiers"
	"github.com/containerd/errdefs"
	"github.com/pelletier/go-toml/v2"

	"github.com/lazyconv/lazyconv/format"
	"github.com/lazyconv/lazyconv/service"
)

// config is lazyconvd's configuration file.
type config struct {
	// Address is the unix socket lazyconvd serves on.
	Address string
	// SocketMode is the socket's permission bits (default 0660). Whoever can
	// connect to the socket can do to the namespaces it serves what a
	// containerd client can do with images: convert onto and push them.
	SocketMode os.FileMode
	// SocketGroup is the group the socket belongs to, by name or number (""
	// leaves lazyconvd's own group).
	SocketGroup string
	// ContainerdAddress is containerd's socket.
	ContainerdAddress string
	// AllowedNamespaces are the containerd namespaces the socket serves: a
	// request for any other is refused with PermissionDenied. Empty (the
	// default) serves every namespace.
	AllowedNamespaces []string
	// Converter is the conversion service's configuration, as the plugin's.
	Converter service.Config
	// DisabledPlugins are image-converter plugins (formats) to leave out,
	// by URI or name, as containerd's disabled_plugins.
	DisabledPlugins []string
	// Plugins are the image-converter plugins' config sections, by URI
	// ([plugins.'io.containerd.image-converter.v1.estargz']), as in
	// containerd's config.
	Plugins map[string]format.Config
}

// file is the configuration file as TOML decodes it.
type file struct {
	Address           string                    `toml:"address"`
	SocketMode        string                    `toml:"socket_mode"`
	SocketGroup       string                    `toml:"socket_group"`
	ContainerdAddress string                    `toml:"containerd_address"`
	AllowedNamespaces []string                  `toml:"allowed_namespaces"`
	Converter         map[string]any            `toml:"converter"`
	DisabledPlugins   []string                  `toml:"disabled_plugins"`
	Plugins           map[string]map[string]any `toml:"plugins"`
}

func defaultConfig() config {
	return config{
		Address:           "/run/lazyconv/lazyconvd.sock",
		SocketMode:        0o660,
		ContainerdAddress: "/run/containerd/containerd.sock",
		Converter:         service.DefaultConfig(),
	}
}

// loadConfig reads path over the defaults; a missing file means defaults.
// Unknown keys are an error, so that a typo does not go unnoticed.
func loadConfig(path string) (config, error) {
	cfg := defaultConfig()
	f, err := os.Open(path)
	if errors.Is(err, os.ErrNotExist) {
		return cfg, nil
	}
	if err != nil {
		return cfg, err
	}
	defer f.Close()
	raw := file{Address: cfg.Address, SocketMode: fmt.Sprintf("%04o", cfg.SocketMode), ContainerdAddress: cfg.ContainerdAddress}
	dec := toml.NewDecoder(f).DisallowUnknownFields()
	if err := dec.Decode(&raw); err != nil {
		return cfg, fmt.Errorf("%s: %v: %w", path, err, errdefs.ErrInvalidArgument)
	}
	cfg.Address, cfg.ContainerdAddress, cfg.SocketGroup = raw.Address, raw.ContainerdAddress, raw.SocketGroup
	mode, err := strconv.ParseUint(raw.SocketMode, 8, 32)
	if err != nil || mode > 0o777 {
		return cfg, fmt.Errorf("%s: socket_mode %q: want permission bits in octal, such as \"0660\": %w", path, raw.SocketMode, errdefs.ErrInvalidArgument)
	}
	cfg.SocketMode = os.FileMode(mode)
	for _, ns := range raw.AllowedNamespaces {
		if err := identifiers.Validate(ns); err != nil {
			return cfg, fmt.Errorf("%s: allowed_namespaces: %w", path, err)
		}
	}
	if len(raw.AllowedNamespaces) > 0 {
		cfg.AllowedNamespaces = raw.AllowedNamespaces
	}
	if cfg.Converter, err = service.ParseConfig(raw.Converter); err != nil {
		return cfg, fmt.Errorf("%s: [converter]: %w", path, err)
	}
	cfg.DisabledPlugins = raw.DisabledPlugins
	for uri, section := range raw.Plugins {
		if !strings.HasPrefix(uri, format.PluginType.String()+".") {
			return cfg, fmt.Errorf("%s: [plugins.'%s']: lazyconvd runs only %s plugins (formats): %w", path, uri, format.PluginType, errdefs.ErrInvalidArgument)
		}
		if cfg.Plugins == nil {
			cfg.Plugins = map[string]format.Config{}
		}
		cfg.Plugins[uri] = section
	}
	return cfg, nil
}

// formats loads the format plugins in-process with the file's sections and
// disabled_plugins, as containerd would.
func (c config) formats(ctx context.Context) (format.Loaded, error) {
	return format.Load(ctx, c.Plugins, c.DisabledPlugins)
}

// socketGID is the group id SocketGroup names, by number or by name (-1
// for none: the socket keeps lazyconvd's group).
func (c config) socketGID() (int, error) {
	if c.SocketGroup == "" {
		return -1, nil
	}
	if gid, err := strconv.Atoi(c.SocketGroup); err == nil && gid >= 0 {
		return gid, nil
	}
	g, err := user.LookupGroup(c.SocketGroup)
	if err != nil {
		return -1, fmt.Errorf("socket_group %q: %v: %w", c.SocketGroup, err, errdefs.ErrInvalidArgument)
	}
	gid, err := strconv.Atoi(g.Gid)
	if err != nil {
		return -1, fmt.Errorf("socket_group %q: gid %q: %w", c.SocketGroup, g.Gid, errdefs.ErrInvalidArgument)
	}
	return gid, nil
}
