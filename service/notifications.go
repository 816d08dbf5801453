package service

import (
	"fmt"
	"maps"
	"slices"

	"github.com/containerd/errdefs"
)

// NotificationsConfig is the [notifications] table: where registries'
// push notifications are received (distribution's notification endpoints,
// Harbor's webhooks), each push of a matching repository becoming a rule
// job on this node.
//
//	[plugins.'io.containerd.grpc.v1.lazyconv'.notifications]
//	  address = "0.0.0.0:5050"       # served at /notifications; "" (the default): off
//	  token = "secret"               # optional: "Authorization: Bearer secret" required
//	  max_body_bytes = 1048576       # bodies beyond are refused (413)
//	  namespace = "default"          # the containerd namespace the pushed images go to
type NotificationsConfig struct {
	Address      string
	Token        string
	MaxBodyBytes int64
	Namespace    string
}

// DefaultNotificationsBodyBytes bounds a notification's body.
const DefaultNotificationsBodyBytes = 1 << 20

func defaultNotifications() NotificationsConfig {
	return NotificationsConfig{MaxBodyBytes: DefaultNotificationsBodyBytes, Namespace: "default"}
}

func parseNotifications(v any) (NotificationsConfig, error) {
	n := defaultNotifications()
	m, ok := v.(map[string]any)
	if !ok {
		return n, fmt.Errorf("notifications takes a table, not %v: %w", v, errdefs.ErrInvalidArgument)
	}
	for _, k := range slices.Sorted(maps.Keys(m)) {
		val := m[k]
		switch k {
		case "address", "token", "namespace":
			text, ok := val.(string)
			if !ok {
				return n, fmt.Errorf("notifications.%s takes a string, not %v: %w", k, val, errdefs.ErrInvalidArgument)
			}
			switch k {
			case "address":
				n.Address = text
			case "token":
				n.Token = text
			default:
				n.Namespace = text
			}
		case "max_body_bytes":
			b, ok := asInt(val)
			if !ok || b < 1 {
				return n, fmt.Errorf("notifications.max_body_bytes takes a whole number of at least 1, not %v: %w", val, errdefs.ErrInvalidArgument)
			}
			n.MaxBodyBytes = int64(b)
		default:
			return n, fmt.Errorf("unknown key notifications.%s (known: address, token, max_body_bytes, namespace): %w", k, errdefs.ErrInvalidArgument)
		}
	}
	return n, nil
}

func (n NotificationsConfig) toml() map[string]any {
	return map[string]any{"address": n.Address, "token": n.Token, "max_body_bytes": n.MaxBodyBytes, "namespace": n.Namespace}
}

func (n NotificationsConfig) validate() error {
	if n.Address != "" && n.Namespace == "" {
		return fmt.Errorf("notifications.namespace may not be empty: %w", errdefs.ErrInvalidArgument)
	}
	return nil
}
