package config

import (
	"os"
	"path/filepath"
	"reflect"
	"strings"
	"testing"
	"time"

	"gopkg.in/yaml.v3"
)

// TestShippedConfigIsDefaults keeps the documented config.yaml at the repo
// root in step with the code: it names every setting, at its default.
func TestShippedConfigIsDefaults(t *testing.T) {
	raw, err := os.ReadFile("../../config.yaml")
	if err != nil {
		t.Fatal(err)
	}
	var tree map[string]any
	if err := yaml.Unmarshal(raw, &tree); err != nil {
		t.Fatal(err)
	}
	for _, p := range Paths() {
		var node any = tree
		for _, k := range strings.Split(p, ".") {
			m, ok := node.(map[string]any)
			if !ok {
				node = nil
				break
			}
			node = m[k]
		}
		if node == nil && !strings.Contains(string(raw), strings.Split(p, ".")[len(strings.Split(p, "."))-1]+":") {
			t.Errorf("config.yaml does not document %s", p)
		}
	}
	got, err := Load("../../config.yaml", nil)
	if err != nil {
		t.Fatal(err)
	}
	want := Defaults()
	want.fillDerived()
	if !reflect.DeepEqual(got, want) {
		t.Errorf("config.yaml differs from Defaults():\n got %+v\nwant %+v", got, want)
	}
}

func TestEnvOverrides(t *testing.T) {
	c, err := Load("", []string{
		"MYELIN_SERVER_NAME=example.org",
		"MYELIN_DATA_DIR=/tmp/x",
		"MYELIN_CLIENT_API_LISTEN=0.0.0.0:9000",
		"MYELIN_FEDERATION_API_LISTEN=0.0.0.0:8448",
		"MYELIN_DATABASE_URL=postgres://u@h/db",
		"MYELIN_REGISTRATION_OPEN=true",
		"MYELIN_REGISTRATION_SHARED_SECRET=s3cret",
		"MYELIN_RATE_LIMITS_ENABLED=false",
		"MYELIN_RATE_LIMITS_SEND_PER_SECOND=2.5",
		"MYELIN_SYNC_MAX_TIMEOUT=30s",
		"MYELIN_FEDERATION_API_MAX_REQUEST_BYTES=1048576",
		"MYELIN_FEDERATION_API_KEY_SERVERS=matrix.org, notary.example:8448",
		"MYELIN_FEDERATION_API_ALLOW_PRIVATE_ADDRESSES=true",
		"MYELIN_FEDERATION_API_WELL_KNOWN_SERVER=fed.example.org:443",
		"MYELIN_FEDERATION_API_ALLOWED_SERVERS=*.example.org, matrix.org",
		"MYELIN_FEDERATION_API_DENIED_SERVERS=evil.example.org",
		"MYELIN_RATE_LIMITS_FEDERATION_BURST=7",
		"MYELIN_MEDIA_API_MAX_UPLOAD_BYTES=2048",
		"MYELIN_MEDIA_API_LEGACY_FREEZE_DATE=2024-09-01",
		"MYELIN_MEDIA_API_THUMBNAIL_SIZES=32x32 crop, 640x480 scale",
		"MYELIN_MEDIA_API_UNUSED_EXPIRY=1h",
		"MYELIN_MEDIA_API_URL_PREVIEW_ENABLED=true",
		"MYELIN_MEDIA_API_URL_PREVIEW_IP_RANGE_WHITELIST=127.0.0.1/32, ::1",
		"MYELIN_MEDIA_API_URL_PREVIEW_TIMEOUT=3s",
		"UNRELATED=1",
	})
	if err != nil {
		t.Fatal(err)
	}
	checks := []struct {
		name      string
		got, want any
	}{
		{"server_name", c.ServerName, "example.org"},
		{"data_dir", c.DataDir, "/tmp/x"},
		{"client_api.listen", c.ClientAPI.Listen, "0.0.0.0:9000"},
		{"federation_api.listen", c.FederationAPI.Listen, "0.0.0.0:8448"},
		{"database.url", c.Database.URL, "postgres://u@h/db"},
		{"registration.open", c.Registration.Open, true},
		{"registration.shared_secret", c.Registration.SharedSecret, "s3cret"},
		{"rate_limits.enabled", c.RateLimits.Enabled, false},
		{"rate_limits.send.per_second", c.RateLimits.Send.PerSecond, 2.5},
		{"sync.max_timeout", c.Sync.MaxTimeout, 30 * time.Second},
		{"federation_api.max_request_bytes", c.FederationAPI.MaxRequestBytes, int64(1 << 20)},
		{"federation_api.key_servers", c.FederationAPI.KeyServers, []string{"matrix.org", "notary.example:8448"}},
		{"federation_api.allow_private_addresses", c.FederationAPI.AllowPrivateAddresses, true},
		{"federation_api.well_known_server", c.FederationAPI.WellKnownServer, "fed.example.org:443"},
		{"federation_api.allowed_servers", c.FederationAPI.AllowedServers, []string{"*.example.org", "matrix.org"}},
		{"federation_api.denied_servers", c.FederationAPI.DeniedServers, []string{"evil.example.org"}},
		{"rate_limits.federation.burst", c.RateLimits.Federation.Burst, 7},
		{"derived store dir", c.NATS.StoreDir, filepath.Join("/tmp/x", "nats")},
		{"media_api.max_upload_bytes", c.MediaAPI.MaxUploadBytes, int64(2048)},
		{"media_api.legacy_freeze_date", c.MediaAPI.LegacyFreezeDate, "2024-09-01"},
		{"media_api.thumbnail_sizes", c.MediaAPI.ThumbnailSizes, []string{"32x32 crop", "640x480 scale"}},
		{"media_api.unused_expiry", c.MediaAPI.UnusedExpiry, time.Hour},
		{"derived media path", c.MediaAPI.BasePath, filepath.Join("/tmp/x", "media")},
		{"media_api.url_preview.enabled", c.MediaAPI.URLPreview.Enabled, true},
		{"media_api.url_preview.ip_range_whitelist", c.MediaAPI.URLPreview.IPRangeWhitelist, []string{"127.0.0.1/32", "::1"}},
		{"media_api.url_preview.timeout", c.MediaAPI.URLPreview.Timeout, 3 * time.Second},
	}
	for _, ch := range checks {
		if !reflect.DeepEqual(ch.got, ch.want) {
			t.Errorf("%s = %v, want %v", ch.name, ch.got, ch.want)
		}
	}
}

func TestValidationNamesFields(t *testing.T) {
	tests := []struct {
		name string
		yaml string
		env  []string
		want []string // substrings of the error
	}{
		{"empty server name", "server_name: ''\n", nil, []string{"server_name"}},
		{"bad listen", "client_api:\n  listen: nowhere\n", nil, []string{"client_api.listen", "nowhere"}},
		{"unknown field", "client_api:\n  lisen: x\n", nil, []string{"lisen"}},
		{"bad level and version together", "logging:\n  level: loud\nrooms:\n  default_version: '99'\n", nil,
			[]string{"logging.level", "loud", "rooms.default_version", "99"}},
		{"bad env bool", "", []string{"MYELIN_REGISTRATION_OPEN=maybe"}, []string{"registration.open", "MYELIN_REGISTRATION_OPEN"}},
		{"bad database url", "database:\n  url: mysql://x\n", nil, []string{"database.url"}},
		{"tls half set", "client_api:\n  tls_cert: /a.pem\n", nil, []string{"client_api.tls_cert"}},
		{"no publish retry", "nats:\n  publish_retry: 0s\n", nil, []string{"nats.publish_retry", "0s"}},
		{"federation body limit too small", "", []string{"MYELIN_FEDERATION_API_MAX_REQUEST_BYTES=100"}, []string{"federation_api.max_request_bytes", "100"}},
		{"bad key server", "federation_api:\n  key_servers: [matrix.org, 'bad name']\n", nil, []string{"federation_api.key_servers", "bad name"}},
		{"key server is this server", "server_name: hs.example\nfederation_api:\n  key_servers: [hs.example]\n", nil, []string{"federation_api.key_servers", "this server"}},
		{"bad private addresses env", "", []string{"MYELIN_FEDERATION_API_ALLOW_PRIVATE_ADDRESSES=sometimes"}, []string{"federation_api.allow_private_addresses"}},
		{"bad well-known server", "federation_api:\n  well_known_server: 'https://x'\n", nil, []string{"federation_api.well_known_server"}},
		{"denied server with a port", "federation_api:\n  denied_servers: ['evil.example:8448']\n", nil, []string{"federation_api.denied_servers", "evil.example:8448"}},
		{"allowed server with a space", "", []string{"MYELIN_FEDERATION_API_ALLOWED_SERVERS=a.example,b example"}, []string{"federation_api.allowed_servers", "b example"}},
		{"bad freeze date", "media_api:\n  legacy_freeze_date: 1/2/2024\n", nil, []string{"media_api.legacy_freeze_date", "1/2/2024"}},
		{"bad thumbnail size", "", []string{"MYELIN_MEDIA_API_THUMBNAIL_SIZES=32x32 crop,0x10 scale,9x9 stretch"}, []string{"media_api.thumbnail_sizes", "0x10 scale", "9x9 stretch"}},
		{"bad preview range", "media_api:\n  url_preview:\n    ip_range_blacklist: ['10.0.0.0/40']\n", nil, []string{"media_api.url_preview.ip_range_blacklist", "10.0.0.0/40"}},
		{"bad preview allow env", "", []string{"MYELIN_MEDIA_API_URL_PREVIEW_IP_RANGE_WHITELIST=127.0.0.1/8,nope"}, []string{"media_api.url_preview.ip_range_whitelist", "nope"}},
		{"tiny upload limit", "", []string{"MYELIN_MEDIA_API_MAX_UPLOAD_BYTES=10"}, []string{"media_api.max_upload_bytes", "10"}},
		{"unknown log component", "", []string{"MYELIN_LOGGING_COMPONENTS=federationapi=debug,keyserver=debug"}, []string{"logging.components", "keyserver"}},
		{"bad component level", "logging:\n  components: 'syncapi=chatty'\n", nil, []string{"logging.components", "chatty"}},
		{"component without level", "logging:\n  components: 'syncapi'\n", nil, []string{"logging.components", "syncapi"}},
		{"no federation rate", "rate_limits:\n  federation:\n    per_second: 0\n", nil, []string{"rate_limits.federation.per_second"}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			path := filepath.Join(t.TempDir(), "c.yaml")
			if err := os.WriteFile(path, []byte(tt.yaml), 0o600); err != nil {
				t.Fatal(err)
			}
			_, err := Load(path, tt.env)
			if err == nil {
				t.Fatal("Load succeeded")
			}
			for _, w := range tt.want {
				if !strings.Contains(err.Error(), w) {
					t.Errorf("error %q does not mention %q", err, w)
				}
			}
		})
	}
}

func TestComponentLevels(t *testing.T) {
	got, err := Logging{Components: " federationapi=debug, syncapi = trace ,"}.ComponentLevels()
	if err != nil {
		t.Fatal(err)
	}
	if len(got) != 2 || got["federationapi"] != "debug" || got["syncapi"] != "trace" {
		t.Fatalf("ComponentLevels = %v", got)
	}
}

func TestEmptyFileIsDefaults(t *testing.T) {
	path := filepath.Join(t.TempDir(), "empty.yaml")
	if err := os.WriteFile(path, nil, 0o600); err != nil {
		t.Fatal(err)
	}
	if _, err := Load(path, nil); err != nil {
		t.Fatalf("empty file: %v", err)
	}
}
