package mediaapi_test

import (
	"bytes"
	"encoding/binary"
	"image"
	"image/color"
	"image/gif"
	"image/png"
	"math/rand/v2"
	"os"
	"testing"

	"golang.org/x/image/webp"

	"myelin/internal/sqldb/sqldbtest"
	"myelin/setup/config"
)

// animatedGIF is a w x h GIF of n frames of noise (so it does not
// compress to almost nothing; flat frames with noise false), each shown
// for 10 + i hundredths.
func animatedGIF(t *testing.T, w, h, n int, noise ...bool) []byte {
	t.Helper()
	pal := color.Palette{color.Black, color.White, color.RGBA{255, 0, 0, 255}, color.RGBA{0, 0, 255, 255}}
	rng := rand.New(rand.NewPCG(1, 2))
	g := &gif.GIF{}
	for i := 0; i < n; i++ {
		p := image.NewPaletted(image.Rect(0, 0, w, h), pal)
		for j := range p.Pix {
			if len(noise) == 0 || noise[0] {
				p.Pix[j] = uint8(rng.IntN(len(pal)))
			}
		}
		g.Image = append(g.Image, p)
		g.Delay = append(g.Delay, 10+i)
	}
	var buf bytes.Buffer
	if err := gif.EncodeAll(&buf, g); err != nil {
		t.Fatal(err)
	}
	return buf.Bytes()
}

// animatedWebP wraps the VP8 bitstream of a still WebP into an animated
// WebP of n frames (spec: RIFF, VP8X with the animation flag, ANIM, ANMF).
func animatedWebP(t *testing.T, still []byte, n int) []byte {
	t.Helper()
	cfg, err := webp.DecodeConfig(bytes.NewReader(still))
	if err != nil {
		t.Fatal(err)
	}
	vp8 := still[12:] // the one chunk after RIFF....WEBP
	if string(vp8[:4]) != "VP8 " {
		t.Fatalf("testdata WebP starts with %q", vp8[:4])
	}
	chunk := func(fourcc string, data []byte) []byte {
		out := append([]byte(fourcc), 0, 0, 0, 0)
		binary.LittleEndian.PutUint32(out[4:], uint32(len(data)))
		out = append(out, data...)
		if len(data)%2 == 1 {
			out = append(out, 0)
		}
		return out
	}
	u24 := func(v int) []byte { return []byte{byte(v), byte(v >> 8), byte(v >> 16)} }
	var body []byte
	body = append(body, "WEBP"...)
	vp8x := append([]byte{0x02, 0, 0, 0}, append(u24(cfg.Width-1), u24(cfg.Height-1)...)...)
	body = append(body, chunk("VP8X", vp8x)...)
	body = append(body, chunk("ANIM", []byte{0, 0, 0, 0, 0, 0})...)
	for i := 0; i < n; i++ {
		hdr := append(append(append(u24(0), u24(0)...), append(u24(cfg.Width-1), u24(cfg.Height-1)...)...), append(u24(100), 0)...)
		body = append(body, chunk("ANMF", append(hdr, vp8...))...)
	}
	out := append([]byte("RIFF"), 0, 0, 0, 0)
	binary.LittleEndian.PutUint32(out[4:], uint32(len(body)))
	return append(out, body...)
}

// TestAnimatedThumbnails: animated=true of a GIF or WebP under
// animated_max_bytes is the original; of a larger animated GIF, an
// animated GIF thumbnail with every frame; of a larger animated WebP, a
// still of its first frame (x/image/webp decodes no animation), which is
// also its thumbnail without animated=true.
func TestAnimatedThumbnails(t *testing.T) {
	sqldbtest.Each(t, func(t *testing.T, dbURL string) {
		s := startServer(t, dbURL, func(c *config.Config) { c.MediaAPI.AnimatedMaxBytes = 2048 })
		alice := register(t, s, "an-alice")
		still, err := os.ReadFile("testdata/blue-purple-pink.lossy.webp")
		if err != nil {
			t.Fatal(err)
		}
		wcfg, _ := webp.DecodeConfig(bytes.NewReader(still))
		bigGIF := animatedGIF(t, 300, 200, 3)
		smallGIF := animatedGIF(t, 20, 10, 2)
		stillGIF := animatedGIF(t, 300, 200, 1)
		// 5 M pixels of frames (over the test's 4 M), of a 500x500 canvas.
		bombGIF := animatedGIF(t, 500, 500, 20, false)
		animWebP := animatedWebP(t, still, 3)
		if len(smallGIF) > 2048 || len(bigGIF) <= 2048 || len(animWebP) <= 2048 {
			t.Fatalf("sizes %d %d %d against the 2048 limit", len(smallGIF), len(bigGIF), len(animWebP))
		}
		thumb := func(id, query string) (string, []byte) {
			t.Helper()
			r := alice.do(t, "GET", "/_matrix/client/v1/media/thumbnail/"+id+"?"+query, nil, nil)
			if r.status != 200 {
				t.Fatalf("%s?%s: %d %s", id, query, r.status, r.body)
			}
			return r.header.Get("Content-Type"), r.body
		}
		stillOf := func(ct string, body []byte, w, h int) {
			t.Helper()
			if ct != "image/png" {
				t.Fatalf("type %s, want a still PNG", ct)
			}
			img, err := png.Decode(bytes.NewReader(body))
			if err != nil {
				t.Fatal(err)
			}
			if b := img.Bounds(); b.Dx() != w || b.Dy() != h {
				t.Errorf("still %dx%d, want %dx%d", b.Dx(), b.Dy(), w, h)
			}
		}

		t.Run("small GIF is the original", func(t *testing.T) {
			id := alice.upload(t, smallGIF, "image/gif", "")
			if _, body := thumb(id, "width=32&height=32&animated=true"); !bytes.Equal(body, smallGIF) {
				t.Errorf("%d bytes, want the original's %d", len(body), len(smallGIF))
			}
		})
		t.Run("large GIF animated", func(t *testing.T) {
			id := alice.upload(t, bigGIF, "image/gif", "")
			for _, method := range []string{"crop", "scale"} {
				ct, body := thumb(id, "width=96&height=96&method="+method+"&animated=true")
				if ct != "image/gif" {
					t.Fatalf("%s: type %s", method, ct)
				}
				g, err := gif.DecodeAll(bytes.NewReader(body))
				if err != nil {
					t.Fatal(err)
				}
				wantW, wantH := 96, 96
				if method == "scale" {
					wantW, wantH = 300, 200 // fits the 320x240 box as it is
				}
				if len(g.Image) != 3 || g.Config.Width != wantW || g.Config.Height != wantH {
					t.Errorf("%s: %d frames of %dx%d, want 3 of %dx%d", method, len(g.Image), g.Config.Width, g.Config.Height, wantW, wantH)
				}
				if len(g.Delay) != 3 || g.Delay[0] != 10 || g.Delay[2] != 12 {
					t.Errorf("%s: delays %v", method, g.Delay)
				}
			}
			// Without animated=true: a still of the first frame.
			ct, body := thumb(id, "width=96&height=96&method=crop")
			stillOf(ct, body, 96, 96)
		})
		t.Run("one-frame GIF", func(t *testing.T) {
			id := alice.upload(t, stillGIF, "image/gif", "")
			ct, body := thumb(id, "width=96&height=96&method=crop&animated=true")
			stillOf(ct, body, 96, 96)
		})
		t.Run("GIF with too many frame pixels", func(t *testing.T) {
			id := alice.upload(t, bombGIF, "image/gif", "")
			ct, body := thumb(id, "width=32&height=32&method=crop&animated=true")
			stillOf(ct, body, 32, 32)
		})
		t.Run("animated WebP", func(t *testing.T) {
			id := alice.upload(t, animWebP, "image/webp", "")
			for _, q := range []string{"width=32&height=32&method=crop&animated=true", "width=32&height=32&method=crop"} {
				ct, body := thumb(id, q)
				stillOf(ct, body, 32, 32)
			}
			ct, body := thumb(id, "width=320&height=240&method=scale")
			stillOf(ct, body, min(wcfg.Width, 320), min(wcfg.Height, 240))
		})
		t.Run("truncated animated GIF", func(t *testing.T) {
			id := alice.upload(t, bigGIF[:len(bigGIF)*2/3], "image/gif", "")
			r := alice.do(t, "GET", "/_matrix/client/v1/media/thumbnail/"+id+"?width=32&height=32&animated=true", nil, nil)
			if r.status != 400 || r.errcode() != "M_UNKNOWN" {
				t.Errorf("%d %s", r.status, r.body)
			}
		})
	})
}
