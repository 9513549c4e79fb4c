package pgstore

import (
	"context"
	"encoding/json"
	"strconv"
	"strings"
	"testing"

	"github.com/logical-go/logical"
)

// nopExec takes every statement without a server, so that a benchmark
// measures the Target's own work.
type nopExec struct{ args int }

func (n *nopExec) exec(_ context.Context, _ stmt, sql string, args ...any) error {
	n.args += len(args) + len(sql)
	return nil
}
func (n *nopExec) keep([]logical.Mutation) *keptMuts { return nil }

// BenchmarkApplyRows writes pgbench_accounts updates as pglogical decodes
// them, batch rows per call, with no server: pgstore's CPU per row.
func BenchmarkApplyRows(b *testing.B) {
	info := benchAccounts()
	filler := strings.Repeat(" ", 84)
	for _, batch := range []int{1, 4, 500} {
		muts := make([]logical.Mutation, batch)
		for i := range muts {
			aid := strconv.Itoa(1000 + i*7)
			muts[i] = logical.Mutation{
				Key:  json.RawMessage(`["` + aid + `"]`),
				Data: json.RawMessage(`{"aid":"` + aid + `","bid":"1","abalance":"` + strconv.Itoa(i-250) + `","filler":"` + filler + `"}`),
			}
		}
		b.Run("batch="+strconv.Itoa(batch), func(b *testing.B) {
			t := NewTarget(nil)
			q := &nopExec{}
			ctx := context.Background()
			for b.Loop() {
				if err := t.applyRows(ctx, q, info, muts); err != nil {
					b.Fatal(err)
				}
			}
			b.ReportMetric(float64(b.Elapsed().Nanoseconds())/float64(b.N*batch), "ns/row")
		})
	}
}

// benchAccounts is pgbench_accounts as readInfo describes it.
func benchAccounts() *tableInfo {
	info := &tableInfo{table: logical.Table{Schema: "public", Name: "pgbench_accounts"}, ident: `public."pgbench_accounts"`, byName: map[string]int{}}
	for i, name := range []string{"aid", "bid", "abalance", "filler"} {
		c := column{name: name, typ: "integer", cast: "pg_catalog.int4", pk: i == 0}
		if name == "filler" {
			c.typ, c.cast, c.typmod = "character(84)", "pg_catalog.bpchar", true
		}
		if c.pk {
			info.pk = append(info.pk, i)
		}
		c.member = memberPrefix(name)
		info.byName[name] = i
		info.cols = append(info.cols, c)
	}
	return info
}
