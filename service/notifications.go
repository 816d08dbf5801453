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
//	  namespace = "lazyconv"         # the containerd namespace the pushed images go to
type NotificationsConfig struct {
	Address      string
	Token        string
	MaxBodyBytes int64
	Namespace    string
}

// DefaultNotificationsNamespace is the namespace pushed images are pulled
// into: one of lazyconv's own, so that a notification never moves a tag an
// image of another namespace's users (a workload's) goes by.
const DefaultNotificationsNamespace = "lazyconv"

// DefaultNotificationsBodyBytes bounds a notification's body.
const DefaultNotificationsBodyBytes = 1 << 20

func defaultNotifications() NotificationsConfig {
	return NotificationsConfig{MaxBodyBytes: DefaultNotificationsBodyBytes, Namespace: DefaultNotificationsNamespace}
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
			b, err := atLeast("notifications.max_body_bytes", val, 1)
			if err != nil {
				return n, err
			}
			n.MaxBodyBytes = int64(b)
		default:
			return n, fmt.Errorf("unknown key notifications.%s (known: address, token, max_body_bytes, namespace): %w", k, errdefs.ErrInvalidArgument)
		}
	}
	return n, nil
}

// toml is the table as `config dump` prints it: without the token, a
// secret.
func (n NotificationsConfig) toml() map[string]any {
	return map[string]any{"address": n.Address, "max_body_bytes": n.MaxBodyBytes, "namespace": n.Namespace}
}

func (n NotificationsConfig) validate() error {
	if n.Address != "" && n.Namespace == "" {
		return fmt.Errorf("notifications.namespace may not be empty: %w", errdefs.ErrInvalidArgument)
	}
	return nil
}
