package mediaapi

import (
	"testing"

	"myelin/setup/config"
)

func TestContentDisposition(t *testing.T) {
	for _, tc := range []struct{ contentType, name, want string }{
		{"image/png", "a.png", `inline; filename="a.png"`},
		{"IMAGE/PNG", "a.png", `inline; filename="a.png"`},
		{"text/html", "a.html", `attachment; filename="a.html"`},
		{"text/html; charset=utf-8", "", "attachment"},
		{"image/svg+xml", "", "attachment"},
		{"not a type", "x", `attachment; filename="x"`},
		{"text/plain", "é.txt", "inline; filename*=utf-8''%C3%A9.txt"},
		{"text/plain", `a"b\c`, "inline; filename*=utf-8''a%22b%5Cc"},
		{"text/plain", "a\r\nX-Evil: 1", "inline; filename*=utf-8''a%0D%0AX-Evil%3A%201"},
		{"text/plain", "a;b=c", "inline; filename=\"a;b=c\""},
	} {
		if got := contentDisposition(tc.contentType, tc.name); got != tc.want {
			t.Errorf("contentDisposition(%q, %q) = %q, want %q", tc.contentType, tc.name, got, tc.want)
		}
	}
}

func TestChooseSize(t *testing.T) {
	var sizes []config.ThumbnailSize
	for _, s := range config.Defaults().MediaAPI.ThumbnailSizes {
		ts, err := config.ParseThumbnailSize(s)
		if err != nil {
			t.Fatal(err)
		}
		sizes = append(sizes, ts)
	}
	for _, tc := range []struct {
		q    thumbnailQuery
		want string
	}{
		{thumbnailQuery{width: 32, height: 32, method: "crop"}, "32x32 crop"},
		{thumbnailQuery{width: 33, height: 20, method: "crop"}, "96x96 crop"},
		{thumbnailQuery{width: 500, height: 500, method: "crop"}, "96x96 crop"},
		{thumbnailQuery{width: 1, height: 1, method: "scale"}, "320x240 scale"},
		{thumbnailQuery{width: 600, height: 400, method: "scale"}, "640x480 scale"},
		{thumbnailQuery{width: 4000, height: 4000, method: "scale"}, "800x600 scale"},
	} {
		got := chooseSize(sizes, tc.q)
		if s := config.ThumbnailSize(got); s != mustSize(t, tc.want) {
			t.Errorf("%+v: got %+v, want %s", tc.q, got, tc.want)
		}
	}
}

func mustSize(t *testing.T, s string) config.ThumbnailSize {
	ts, err := config.ParseThumbnailSize(s)
	if err != nil {
		t.Fatal(err)
	}
	return ts
}

func TestNames(t *testing.T) {
	for _, tc := range []struct {
		name      string
		reachable bool
	}{
		{"example.org", true}, {"example.org:8448", true}, {"1.2.3.4", true}, {"[::1]:8448", true},
		{"..", false}, {".example.org", false}, {"example..org", false}, {"bad name", false},
	} {
		if got := reachableName(tc.name); got != tc.reachable {
			t.Errorf("reachableName(%q) = %v", tc.name, got)
		}
	}
	for _, tc := range []struct {
		id string
		ok bool
	}{
		{"abcXYZ019_-", true}, {"", false}, {"..", false}, {"a/b", false}, {"a%2Fb", false}, {"é", false},
	} {
		if got := validMediaID(tc.id); got != tc.ok {
			t.Errorf("validMediaID(%q) = %v", tc.id, got)
		}
	}
	for _, tc := range []struct {
		h  string
		ok bool
	}{
		{"0123456789abcdef0123456789abcdef0123456789abcdef0123456789abcdef", true},
		{"0123456789ABCDEF0123456789abcdef0123456789abcdef0123456789abcdef", false},
		{"../3456789abcdef0123456789abcdef0123456789abcdef0123456789abcdef", false},
		{"abc", false},
	} {
		if got := validHash(tc.h); got != tc.ok {
			t.Errorf("validHash(%q) = %v", tc.h, got)
		}
	}
}
