package logical

import (
	"time"

	"github.com/pkg/errors"
	"github.com/sirupsen/logrus"
)

// Defaults applied by Config.Preflight.
const (
	DefaultApplyTimeout   = 30 * time.Second
	DefaultBytesInFlight  = 10 << 20
	DefaultFanShards      = 16
	DefaultGroupMax       = 1000
	DefaultRetryDelay     = 10 * time.Second
	DefaultMaxRetryDelay  = time.Minute
	DefaultStandbyTimeout = 5 * time.Second
	// MinRetryDelay is the shortest retry delay; smaller positive values
	// are raised to it.
	MinRetryDelay = time.Millisecond
)

// Config holds the settings shared by all loops of a Factory. The zero
// value of every field but Target is valid; Preflight fills in the
// defaults.
type Config struct {
	// ApplyTimeout is the grace period given to an iteration that is
	// stopped to switch between backfill and streaming. Default 30s.
	ApplyTimeout time.Duration
	// BackfillWindow turns automatic backfill on: when the consistent
	// point is a TimeStamp at least this old and the dialect is a
	// Backfiller, the loop backfills until it is within the window. Zero
	// (the default) means never.
	BackfillWindow time.Duration
	// BytesInFlight bounds, per loop, the bytes of mutation data queued in
	// fan mode; OnData blocks beyond it. Default 10 MiB.
	BytesInFlight int
	// ChaosProb, within [0, 1], makes the loop wrap its dialect with
	// WithChaos. Zero (the default) means no chaos. For tests only.
	ChaosProb float32
	// ChaosSeed seeds the chaos fault sequence; zero picks a random seed.
	ChaosSeed int64
	// FanShards is the number of concurrent Target.Apply calls per loop in
	// fan mode. Default 16. Each shard applies what several batches queued
	// for a table in one call, so a few shards per target core are
	// usually enough: more mostly contend at the target.
	FanShards int
	// ForeignKeys applies the mutations of a batch parents first (deletes
	// children first), using the Target's Orderer. It cannot be combined
	// with Immediate.
	ForeignKeys bool
	// GroupMax is the most batches a dialect can group into one target
	// transaction (one hand-over to the fan queue in fan mode) through Grouper,
	// while a backlog is queued; a group also ends once it holds
	// BytesInFlight bytes of mutation data. Default 1000; 1 turns
	// grouping off.
	GroupMax int
	// Immediate writes in fan mode all the time, without transactions.
	Immediate bool
	// RetryDelay is the pause before a failed side or iteration is
	// restarted, and the first step of the backoff. Zero means 10s;
	// positive values under 1ms become 1ms.
	RetryDelay time.Duration
	// MaxRetryDelay caps the exponential backoff of repeated failures.
	// Zero means one minute; a value equal to RetryDelay gives a fixed
	// delay. Values below RetryDelay are raised to it.
	MaxRetryDelay time.Duration
	// StandbyTimeout is how often a dialect that acknowledges its source on
	// a timer should do so. The loop itself does not use it. Default 5s.
	StandbyTimeout time.Duration

	// Memo persists the consistent points. Default: a new MemoryMemo.
	Memo Memo
	// Target receives the mutations. Required.
	Target Target
	// Script routes and rewrites mutations before they reach the target.
	// Optional.
	Script *Script
	// Logger receives the loop's logs. Default: the logrus standard
	// logger.
	Logger logrus.FieldLogger
	// Observer, if set, is told about every change of a loop's Stats.
	Observer Observer
}

// Preflight fills in defaults and validates the configuration. It is
// idempotent; NewFactory and Start call it. The error names the offending
// field.
func (c *Config) Preflight() error {
	switch {
	case c.ApplyTimeout < 0:
		return fieldErr("ApplyTimeout", "must not be negative", c.ApplyTimeout)
	case c.BackfillWindow < 0:
		return fieldErr("BackfillWindow", "must not be negative", c.BackfillWindow)
	case c.BytesInFlight < 0:
		return fieldErr("BytesInFlight", "must not be negative", c.BytesInFlight)
	case !(c.ChaosProb >= 0 && c.ChaosProb <= 1): // also catches NaN
		return fieldErr("ChaosProb", "must be within [0, 1]", c.ChaosProb)
	case c.FanShards < 0:
		return fieldErr("FanShards", "must be > 0", c.FanShards)
	case c.GroupMax < 0:
		return fieldErr("GroupMax", "must not be negative", c.GroupMax)
	case c.RetryDelay < 0:
		return fieldErr("RetryDelay", "must not be negative", c.RetryDelay)
	case c.MaxRetryDelay < 0:
		return fieldErr("MaxRetryDelay", "must not be negative", c.MaxRetryDelay)
	case c.StandbyTimeout < 0:
		return fieldErr("StandbyTimeout", "must not be negative", c.StandbyTimeout)
	case c.Target == nil:
		return errors.New("logical: Config.Target is required")
	case c.ForeignKeys && c.Immediate:
		return errors.New("logical: Config.ForeignKeys cannot be combined with Config.Immediate")
	}
	if c.ForeignKeys {
		if _, ok := c.Target.(Orderer); !ok {
			return errors.Errorf("logical: Config.ForeignKeys needs a Config.Target that implements Orderer, %T does not", c.Target)
		}
	}
	if c.ApplyTimeout == 0 {
		c.ApplyTimeout = DefaultApplyTimeout
	}
	if c.BytesInFlight == 0 {
		c.BytesInFlight = DefaultBytesInFlight
	}
	if c.FanShards == 0 {
		c.FanShards = DefaultFanShards
	}
	if c.GroupMax == 0 {
		c.GroupMax = DefaultGroupMax
	}
	switch {
	case c.RetryDelay == 0:
		c.RetryDelay = DefaultRetryDelay
	case c.RetryDelay < MinRetryDelay:
		c.RetryDelay = MinRetryDelay
	}
	if c.MaxRetryDelay == 0 {
		c.MaxRetryDelay = DefaultMaxRetryDelay
	}
	if c.MaxRetryDelay < c.RetryDelay {
		c.MaxRetryDelay = c.RetryDelay
	}
	if c.StandbyTimeout == 0 {
		c.StandbyTimeout = DefaultStandbyTimeout
	}
	if c.Memo == nil {
		c.Memo = NewMemoryMemo()
	}
	if c.Logger == nil {
		c.Logger = logrus.StandardLogger()
	}
	if c.Script != nil {
		if err := c.Script.validate(); err != nil {
			return err
		}
	}
	return nil
}

func fieldErr(field, rule string, got any) error {
	return errors.Errorf("logical: Config.%s %s, got %v", field, rule, got)
}

// LoopConfig holds the settings of one loop.
type LoopConfig struct {
	// DefaultConsistentPoint is where the loop starts when the Memo holds
	// no point for it, in the text form of the dialect's stamp (which must
	// implement encoding.TextUnmarshaler). Empty means the ZeroStamp.
	DefaultConsistentPoint string
	// Dialect reads and decodes the source. Required.
	Dialect Dialect
	// LoopName identifies the loop: its consistent point is persisted
	// under this name, and it labels logs and metrics. Required, and
	// unique among the running loops of a Factory.
	LoopName string
	// TargetSchema is the schema mutations are written to; the dialect
	// reads it from State.GetTargetDB.
	TargetSchema string
	// WaitAfterBackfill, if set, holds the switch from backfill to
	// streaming until it is closed. A test hook.
	WaitAfterBackfill <-chan struct{}
}

// Preflight validates the configuration. The error names the offending
// field.
func (c *LoopConfig) Preflight() error {
	if c.Dialect == nil {
		return errors.New("logical: LoopConfig.Dialect is required")
	}
	if c.LoopName == "" {
		return errors.New("logical: LoopConfig.LoopName is required")
	}
	return nil
}
