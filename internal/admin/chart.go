package admin

import (
	"fmt"
	"time"
)

// The chart's geometry, in SVG user units (CSS pixels at 100 %).
const (
	chartLeft   = 34 // room for the scale's numbers
	chartTop    = 8
	chartPlot   = 80 // height of the tallest bar
	chartBottom = 18 // room for the hour labels
	chartBarW   = 12
	chartGap    = 5
	chartLabelN = 6 // an hour label every chartLabelN bars
)

// chart is a messages-per-hour bar chart, drawn as inline SVG by the
// server: no script, no library. It carries its numbers twice for those
// who cannot see it: in the SVG's <title>/<desc> and each bar's <title>,
// and as a table (Rows).
type chart struct {
	ID            string
	Title, Desc   string
	Width, Height int
	Left          int // x where the plot starts
	Base          int // y of the baseline
	Max           int // the scale's top value
	MaxY          int // y of the scale's top
	Bars          []chartBar
	Rows          []chartRow
	Delivered     int // totals of the span
	NotDelivered  int
}

// chartBar is one hour: the delivered part at the bottom, the refused or
// failed part stacked on it.
type chartBar struct {
	X, W           int
	OKY, OKH       int
	BadY, BadH     int
	Title          string
	Label          string // an hour label under some bars
	LabelX, LabelY int
}

type chartRow struct {
	Hour                    string
	Delivered, NotDelivered int
}

// newChart draws counts (oldest hour first, starting at start[i]).
func newChart(id string, start []time.Time, counts []hourCount) chart {
	c := chart{
		ID:     id,
		Width:  chartLeft + len(counts)*(chartBarW+chartGap),
		Height: chartTop + chartPlot + chartBottom,
		Left:   chartLeft - 4,
		Base:   chartTop + chartPlot,
		MaxY:   chartTop,
	}
	for _, n := range counts {
		c.Max = max(c.Max, n.delivered+n.notDelivered)
		c.Delivered += n.delivered
		c.NotDelivered += n.notDelivered
	}
	scale := 1.0
	if c.Max > 0 {
		scale = float64(chartPlot) / float64(c.Max)
	}
	for i, n := range counts {
		from, to := start[i].Format("15:04"), start[i].Add(time.Hour).Format("15:04")
		b := chartBar{X: chartLeft + i*(chartBarW+chartGap), W: chartBarW}
		b.OKH = barHeight(n.delivered, scale)
		b.BadH = barHeight(n.delivered+n.notDelivered, scale) - b.OKH
		if n.notDelivered > 0 {
			b.BadH = max(b.BadH, 1)
		}
		b.OKY = c.Base - b.OKH
		b.BadY = b.OKY - b.BadH
		b.Title = fmt.Sprintf("%s–%s: %d delivered, %d not delivered", from, to, n.delivered, n.notDelivered)
		if i%chartLabelN == 0 {
			b.Label, b.LabelX, b.LabelY = from, b.X, c.Base+chartBottom-4
		}
		c.Bars = append(c.Bars, b)
		c.Rows = append(c.Rows, chartRow{Hour: from + "–" + to, Delivered: n.delivered, NotDelivered: n.notDelivered})
	}
	c.Title = "Messages per hour, last 24 hours"
	c.Desc = fmt.Sprintf("%d delivered and %d not delivered (refused or failed) in the last 24 hours; the busiest hour had %d.",
		c.Delivered, c.NotDelivered, c.Max)
	return c
}

// barHeight is the height of n messages; one message is always visible.
func barHeight(n int, scale float64) int {
	if n == 0 {
		return 0
	}
	return max(int(float64(n)*scale+0.5), 1)
}
