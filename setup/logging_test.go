package setup

import (
	"bytes"
	"strings"
	"testing"

	"github.com/sirupsen/logrus"

	"myelin/setup/config"
)

// TestComponentLoggers: a component named in logging.components logs at
// its own level to the process log's output; the others at the process's.
func TestComponentLoggers(t *testing.T) {
	var out bytes.Buffer
	base := logrus.New()
	base.SetOutput(&out)
	base.SetLevel(logrus.InfoLevel)
	entry, err := componentLoggers(base, config.Logging{Components: "federationapi=debug"})
	if err != nil {
		t.Fatal(err)
	}
	entry("federationapi").Debug("fed detail")
	entry("syncapi").Debug("sync detail")
	entry("syncapi").Info("sync news")
	got := out.String()
	for _, want := range []string{"fed detail", "component=federationapi", "sync news"} {
		if !strings.Contains(got, want) {
			t.Errorf("log lacks %q:\n%s", want, got)
		}
	}
	if strings.Contains(got, "sync detail") {
		t.Errorf("syncapi logged at debug without being asked:\n%s", got)
	}
	if _, err := componentLoggers(base, config.Logging{Components: "nope=debug"}); err == nil {
		t.Error("an unknown component was accepted")
	}
}
