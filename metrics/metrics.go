// Package metrics exports the Stats of logical loops as Prometheus
// metrics.
//
// An Observer is both a logical.Observer (set it as logical.Config.Observer)
// and a prometheus.Collector (register it with a prometheus.Registerer). It
// keeps the latest Stats of each loop and, when scraped, emits them as
// constant metrics labelled by loop:
//
//	logical_commits_total{loop,outcome="ok"|"failed"}   counter
//	logical_point_time_seconds{loop}                     gauge, Unix time of the last point (TimeStamp)
//	logical_point_offset{loop}                           gauge, offset of the last point (OffsetStamp)
//	logical_point_lag_seconds{loop}                      gauge, how far the point was behind when set
//	logical_backfilling{loop}                            gauge, 1 while backfilling
//	logical_source_restarts_total{loop}                  counter
//	logical_process_restarts_total{loop}                 counter
//	logical_iterations_total{loop}                       counter
//	logical_last_error_time_seconds{loop}                gauge, Unix time of the last restart's error
//
// Point metrics are only emitted once the loop has a point of the matching
// kind; the last-error gauge only once there was an error.
package metrics

import (
	"sort"
	"sync"

	"github.com/logical-go/logical"
	"github.com/prometheus/client_golang/prometheus"
)

var (
	loopLabel = []string{"loop"}

	commitsDesc = prometheus.NewDesc("logical_commits_total",
		"Batch commits by outcome.", []string{"loop", "outcome"}, nil)
	pointTimeDesc = prometheus.NewDesc("logical_point_time_seconds",
		"Source time of the last persisted consistent point, as a Unix time.", loopLabel, nil)
	pointOffsetDesc = prometheus.NewDesc("logical_point_offset",
		"Offset of the last persisted consistent point.", loopLabel, nil)
	lagDesc = prometheus.NewDesc("logical_point_lag_seconds",
		"How far the last consistent point was behind the clock when it was persisted.", loopLabel, nil)
	backfillingDesc = prometheus.NewDesc("logical_backfilling",
		"1 while the loop runs in backfill mode, else 0.", loopLabel, nil)
	sourceRestartsDesc = prometheus.NewDesc("logical_source_restarts_total",
		"Restarts of the source (ReadInto or BackfillInto) after an error.", loopLabel, nil)
	processRestartsDesc = prometheus.NewDesc("logical_process_restarts_total",
		"Restarts of a loop iteration after an error (Process or the iteration).", loopLabel, nil)
	iterationsDesc = prometheus.NewDesc("logical_iterations_total",
		"Loop iterations started.", loopLabel, nil)
	lastErrorDesc = prometheus.NewDesc("logical_last_error_time_seconds",
		"When the last error that restarted something happened, as a Unix time.", loopLabel, nil)
)

// Observer keeps the latest Stats of each loop for Prometheus. The zero
// value is ready to use; its methods are safe for concurrent use.
type Observer struct {
	mu    sync.Mutex
	stats map[string]logical.Stats
}

var (
	_ logical.Observer     = (*Observer)(nil)
	_ prometheus.Collector = (*Observer)(nil)
)

// New returns an Observer.
func New() *Observer { return &Observer{} }

// Observe implements logical.Observer: it remembers s as the latest Stats
// of s.LoopName. The loop calls it from its own goroutines.
func (o *Observer) Observe(s logical.Stats) {
	o.mu.Lock()
	defer o.mu.Unlock()
	if o.stats == nil {
		o.stats = make(map[string]logical.Stats)
	}
	o.stats[s.LoopName] = s
}

// Forget drops what is known of a loop, for example once it was stopped
// for good, so that its series disappear.
func (o *Observer) Forget(loop string) {
	o.mu.Lock()
	defer o.mu.Unlock()
	delete(o.stats, loop)
}

// Describe implements prometheus.Collector.
func (o *Observer) Describe(ch chan<- *prometheus.Desc) {
	for _, d := range []*prometheus.Desc{
		commitsDesc, pointTimeDesc, pointOffsetDesc, lagDesc, backfillingDesc,
		sourceRestartsDesc, processRestartsDesc, iterationsDesc, lastErrorDesc,
	} {
		ch <- d
	}
}

// Collect implements prometheus.Collector: constant metrics from the latest
// Stats of every loop, in loop-name order.
func (o *Observer) Collect(ch chan<- prometheus.Metric) {
	o.mu.Lock()
	all := make([]logical.Stats, 0, len(o.stats))
	for _, s := range o.stats {
		all = append(all, s)
	}
	o.mu.Unlock()
	sort.Slice(all, func(i, j int) bool { return all[i].LoopName < all[j].LoopName })

	for _, s := range all {
		loop := s.LoopName
		counter := func(d *prometheus.Desc, v uint64, labels ...string) {
			ch <- prometheus.MustNewConstMetric(d, prometheus.CounterValue, float64(v), append([]string{loop}, labels...)...)
		}
		gauge := func(d *prometheus.Desc, v float64) {
			ch <- prometheus.MustNewConstMetric(d, prometheus.GaugeValue, v, loop)
		}
		counter(commitsDesc, s.CommitsOK, "ok")
		counter(commitsDesc, s.CommitsFailed, "failed")
		counter(sourceRestartsDesc, s.SourceRestarts)
		counter(processRestartsDesc, s.ProcessRestarts)
		counter(iterationsDesc, s.Iterations)
		backfilling := 0.0
		if s.Backfilling {
			backfilling = 1
		}
		gauge(backfillingDesc, backfilling)
		if _, ok := s.Point.(logical.TimeStamp); ok && !s.PointTime.IsZero() {
			gauge(pointTimeDesc, float64(s.PointTime.UnixNano())/1e9)
			gauge(lagDesc, s.Lag.Seconds())
		}
		if _, ok := s.Point.(logical.OffsetStamp); ok {
			gauge(pointOffsetDesc, float64(s.PointOffset))
		}
		if !s.LastErrorTime.IsZero() {
			gauge(lastErrorDesc, float64(s.LastErrorTime.UnixNano())/1e9)
		}
	}
}
