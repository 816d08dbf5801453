package main

import (
	"errors"
	"fmt"
	"os"

	"github.com/containerd/errdefs"
	"github.com/pelletier/go-toml/v2"

	"github.com/lazyconv/lazyconv/service"
)

// config is lazyconvd's configuration file.
type config struct {
	// Address is the unix socket lazyconvd serves on (mode 0660).
	Address string `toml:"address"`
	// ContainerdAddress is containerd's socket.
	ContainerdAddress string `toml:"containerd_address"`
	// Converter is the conversion service's configuration, as the plugin's.
	Converter service.Config
}

// file is the configuration file as TOML decodes it.
type file struct {
	Address           string         `toml:"address"`
	ContainerdAddress string         `toml:"containerd_address"`
	Converter         map[string]any `toml:"converter"`
}

func defaultConfig() config {
	return config{
		Address:           "/run/lazyconv/lazyconvd.sock",
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
	raw := file{Address: cfg.Address, ContainerdAddress: cfg.ContainerdAddress}
	dec := toml.NewDecoder(f).DisallowUnknownFields()
	if err := dec.Decode(&raw); err != nil {
		return cfg, fmt.Errorf("%s: %v: %w", path, err, errdefs.ErrInvalidArgument)
	}
	cfg.Address, cfg.ContainerdAddress = raw.Address, raw.ContainerdAddress
	if cfg.Converter, err = service.ParseConfig(raw.Converter); err != nil {
		return cfg, fmt.Errorf("%s: [converter]: %w", path, err)
	}
	return cfg, nil
}
