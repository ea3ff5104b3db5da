package mediaapi

import (
	"bytes"
	"image"
	"image/jpeg"
	"io"
	"math/rand/v2"
	"net/http"
	"os"
	"path/filepath"
	"runtime"
	"slices"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"myelin/internal/sqldb/sqldbtest"
	"myelin/setup/config"
)

// genReader yields n pseudo-random bytes without holding them.
type genReader struct {
	rng *rand.ChaCha8
	n   int64
}

func (g *genReader) Read(p []byte) (int, error) {
	if g.n <= 0 {
		return 0, io.EOF
	}
	if int64(len(p)) > g.n {
		p = p[:g.n]
	}
	_, _ = g.rng.Read(p)
	g.n -= int64(len(p))
	return len(p), nil
}

// memPeak samples the heap in use and the process's resident set until
// stopped, keeping the largest of each.
type memPeak struct {
	stop           chan struct{}
	done           sync.WaitGroup
	heap, rss      uint64
	baseHeap, bRSS uint64
}

func rssBytes() uint64 {
	b, err := os.ReadFile("/proc/self/status")
	if err != nil {
		return 0
	}
	for _, l := range strings.Split(string(b), "\n") {
		if f := strings.Fields(l); len(f) >= 2 && f[0] == "VmRSS:" {
			kb, _ := strconv.ParseUint(f[1], 10, 64)
			return kb << 10
		}
	}
	return 0
}

func startMemPeak() *memPeak {
	runtime.GC()
	var ms runtime.MemStats
	runtime.ReadMemStats(&ms)
	p := &memPeak{stop: make(chan struct{}), baseHeap: ms.HeapInuse, bRSS: rssBytes()}
	p.done.Add(1)
	go func() {
		defer p.done.Done()
		t := time.NewTicker(20 * time.Millisecond)
		defer t.Stop()
		for {
			var ms runtime.MemStats
			runtime.ReadMemStats(&ms)
			p.heap = max(p.heap, ms.HeapInuse)
			p.rss = max(p.rss, rssBytes())
			select {
			case <-p.stop:
				return
			case <-t.C:
			}
		}
	}()
	return p
}

func (p *memPeak) report(b *testing.B) {
	close(p.stop)
	p.done.Wait()
	b.ReportMetric(float64(p.baseHeap)/(1<<20), "base-heap-MB")
	b.ReportMetric(float64(p.heap)/(1<<20), "peak-heap-MB")
	b.ReportMetric(float64(p.bRSS)/(1<<20), "base-RSS-MB")
	b.ReportMetric(float64(p.rss)/(1<<20), "peak-RSS-MB")
}

const benchUploadSize = 100 << 20

// BenchmarkUploadDownload10x100MB uploads ten 100 MB files at once, then
// downloads them ten at once, over loopback HTTP into a real SQLite, and
// reports the peak heap and resident set: both stay flat (streamed to and
// from disk), far below the 1 GB moved.
func BenchmarkUploadDownload10x100MB(b *testing.B) {
	_, base := newTestAPIBench(b)
	for i := 0; i < b.N; i++ {
		ids := make([]string, 10)
		peak := startMemPeak()
		start := time.Now()
		var wg sync.WaitGroup
		for j := range ids {
			wg.Add(1)
			go func() {
				defer wg.Done()
				body := &genReader{rng: rand.NewChaCha8([32]byte{byte(i), byte(j), 1}), n: benchUploadSize}
				req, _ := http.NewRequest("POST", base+"/_matrix/media/v3/upload", body)
				req.ContentLength = benchUploadSize
				req.Header.Set("Authorization", "Bearer tok")
				res, err := http.DefaultClient.Do(req)
				if err != nil {
					b.Error(err)
					return
				}
				defer res.Body.Close()
				raw, _ := io.ReadAll(res.Body)
				if res.StatusCode != 200 {
					b.Errorf("upload: %d %s", res.StatusCode, raw)
					return
				}
				_, after, _ := strings.Cut(string(raw), "mxc://")
				ids[j], _, _ = strings.Cut(after, `"`)
			}()
		}
		wg.Wait()
		up := time.Since(start)
		start = time.Now()
		for _, id := range ids {
			wg.Add(1)
			go func() {
				defer wg.Done()
				req, _ := http.NewRequest("GET", base+"/_matrix/client/v1/media/download/"+id, nil)
				req.Header.Set("Authorization", "Bearer tok")
				res, err := http.DefaultClient.Do(req)
				if err != nil {
					b.Error(err)
					return
				}
				defer res.Body.Close()
				n, _ := io.Copy(io.Discard, res.Body)
				if res.StatusCode != 200 || n != benchUploadSize {
					b.Errorf("download: %d, %d bytes", res.StatusCode, n)
				}
			}()
		}
		wg.Wait()
		down := time.Since(start)
		peak.report(b)
		b.ReportMetric(float64(10*benchUploadSize)/(1<<20)/up.Seconds(), "upload-MB/s")
		b.ReportMetric(float64(10*benchUploadSize)/(1<<20)/down.Seconds(), "download-MB/s")
	}
}

func newTestAPIBench(b *testing.B) (*MediaAPI, string) {
	return newTestAPI(b, sqldbtest.URL(b, "sqlite"), nil, func(c *config.MediaAPI) { c.MaxUploadBytes = 128 << 20 })
}

// BenchmarkThumbnail decodes a 3000x2000 JPEG (6 Mpixel, a phone photo)
// from disk and scales it to 800x600 and crops it to 96x96, as a first
// thumbnail request does.
func BenchmarkThumbnail(b *testing.B) {
	img := image.NewRGBA(image.Rect(0, 0, 3000, 2000))
	for i := range img.Pix {
		img.Pix[i] = uint8(i * 7)
	}
	path := filepath.Join(b.TempDir(), "photo.jpg")
	f, err := os.Create(path)
	if err != nil {
		b.Fatal(err)
	}
	if err := jpeg.Encode(f, img, nil); err != nil {
		b.Fatal(err)
	}
	f.Close()
	b.ReportAllocs()
	for i := 0; i < b.N; i++ {
		f, err := os.Open(path)
		if err != nil {
			b.Fatal(err)
		}
		src, err := decodeBounded(f, "image/jpeg", 32_000_000)
		f.Close()
		if err != nil {
			b.Fatal(err)
		}
		if out := resize(src, config.ThumbnailSize{Width: 800, Height: 600, Method: "scale"}); out.Bounds().Dx() != 800 {
			b.Fatalf("scaled to %v", out.Bounds())
		}
		if out := resize(src, config.ThumbnailSize{Width: 96, Height: 96, Method: "crop"}); out.Bounds().Dx() != 96 || out.Bounds().Dy() != 96 {
			b.Fatalf("cropped to %v", out.Bounds())
		}
	}
}

// BenchmarkThumbnailBurst asks, all at once, for the first thumbnail of
// sixteen 3000x2000 JPEGs (sixteen media IDs, so sixteen decodes), and
// samples how many thumbnail workers are busy every millisecond: never
// more than the pool's one a core, the rest wait their turn. It reports
// the pool's size, the most seen busy, the burst's wall time, each
// request's latency (median and slowest) and the peak heap and RSS.
func BenchmarkThumbnailBurst(b *testing.B) {
	const burst = 16
	m, base := newTestAPI(b, sqldbtest.URL(b, "sqlite"), nil)
	img := image.NewRGBA(image.Rect(0, 0, 3000, 2000))
	for i := range img.Pix {
		img.Pix[i] = uint8(i * 7)
	}
	var photo bytes.Buffer
	if err := jpeg.Encode(&photo, img, nil); err != nil {
		b.Fatal(err)
	}
	do := func(method, path string, body io.Reader) (int, []byte) {
		req, _ := http.NewRequest(method, base+path, body)
		req.Header.Set("Authorization", "Bearer tok")
		req.Header.Set("Content-Type", "image/jpeg")
		res, err := http.DefaultClient.Do(req)
		if err != nil {
			b.Fatal(err)
		}
		defer res.Body.Close()
		raw, _ := io.ReadAll(res.Body)
		return res.StatusCode, raw
	}
	for i := 0; i < b.N; i++ {
		b.StopTimer()
		ids := make([]string, burst)
		for j := range ids {
			status, raw := do("POST", "/_matrix/media/v3/upload", bytes.NewReader(photo.Bytes()))
			if status != 200 {
				b.Fatalf("upload: %d %s", status, raw)
			}
			_, after, _ := strings.Cut(string(raw), "mxc://")
			ids[j], _, _ = strings.Cut(after, `"`)
		}
		peak := startMemPeak()
		var busy atomic.Int32
		stop := make(chan struct{})
		var sampler sync.WaitGroup
		sampler.Add(1)
		go func() {
			defer sampler.Done()
			t := time.NewTicker(time.Millisecond)
			defer t.Stop()
			for {
				if n := int32(len(m.thumbSlots)); n > busy.Load() {
					busy.Store(n)
				}
				select {
				case <-stop:
					return
				case <-t.C:
				}
			}
		}()
		b.StartTimer()
		start := time.Now()
		lat := make([]time.Duration, burst)
		var wg sync.WaitGroup
		for j, id := range ids {
			wg.Add(1)
			go func() {
				defer wg.Done()
				t0 := time.Now()
				status, raw := do("GET", "/_matrix/client/v1/media/thumbnail/"+id+"?width=640&height=480&method=scale", nil)
				lat[j] = time.Since(t0)
				if status != 200 {
					b.Errorf("thumbnail: %d %s", status, raw)
				}
			}()
		}
		wg.Wait()
		wall := time.Since(start)
		b.StopTimer()
		close(stop)
		sampler.Wait()
		peak.report(b)
		slices.Sort(lat)
		b.ReportMetric(float64(cap(m.thumbSlots)), "workers")
		b.ReportMetric(float64(busy.Load()), "peak-busy")
		b.ReportMetric(wall.Seconds(), "burst-s")
		b.ReportMetric(lat[burst/2].Seconds(), "p50-s")
		b.ReportMetric(lat[burst-1].Seconds(), "max-s")
		if int(busy.Load()) > cap(m.thumbSlots) {
			b.Errorf("%d thumbnails decoded at once, pool of %d", busy.Load(), cap(m.thumbSlots))
		}
	}
}
