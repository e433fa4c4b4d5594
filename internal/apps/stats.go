package apps

import (
	"bufio"
	"fmt"
	"os"
	"strconv"
	"strings"

	"github.com/vishvananda/netlink"

	"github.com/patu-dev/patu/bpf"
	"github.com/patu-dev/patu/internal/nodepath"
	"github.com/patu-dev/patu/netns"
)

// Stats is what a run moved and cost, as differences over the
// applications' run.
type Stats struct {
	// VethRx and VethTx are the pods' host-side veths' byte counters,
	// summed: rx is what the pods sent into the node, tx what the node
	// (the bridge) delivered to them. Patu's packet path enters by the
	// sender's veth (rx) and skips the bridge; it hands a bulk direction
	// to the receiver's veth itself, which VethTx leaves out. The socket
	// path skips both veths.
	VethRx uint64 `json:"veth_rx_bytes"`
	VethTx uint64 `json:"veth_tx_bytes"`
	// KernelCPU is system + irq + softirq time over all CPUs, seconds
	// (/proc/stat): the node's kernel work for the transfer, wherever it
	// ran. BusyCPU adds user time.
	KernelCPU float64 `json:"kernel_cpu_s"`
	BusyCPU   float64 `json:"busy_cpu_s"`
	// PatuBytes is what Patu's paths carried (bpf.CarriedBytes).
	PatuBytes uint64            `json:"patu_bytes"`
	Local     bpf.LocalCounters `json:"local"`
	Socket    *bpf.Counters     `json:"socket,omitempty"`
	// ConntrackInvalid is conntrack's INVALID counter in the node
	// namespace, InvalidDropped kube-proxy's drop of those.
	ConntrackInvalid uint64 `json:"conntrack_invalid"`
	InvalidDropped   uint64 `json:"invalid_dropped"`
	ForwardPackets   uint64 `json:"forward_packets"`
}

type snap struct {
	Stats
	cpu cpuTimes
}

// snapshot reads every counter of the run.
func (t *topo) snapshot() (snap, error) {
	var s snap
	var err error
	if s.cpu, err = readCPU(); err != nil {
		return s, err
	}
	err = t.net.Node.Do(func() error {
		h, err := netlink.NewHandle()
		if err != nil {
			return err
		}
		defer h.Close()
		for i, p := range t.net.Pods {
			if t.deleted[i] {
				continue
			}
			l, err := h.LinkByIndex(p.HostIfindex)
			if err != nil {
				return fmt.Errorf("veth of %s: %w", p.Name, err)
			}
			if st := l.Attrs().Statistics; st != nil {
				s.VethRx += st.RxBytes
				s.VethTx += st.TxBytes
			}
		}
		s.ConntrackInvalid, err = conntrackInvalid()
		return err
	})
	if err != nil {
		return s, err
	}
	ns, err := nodepath.ReadStats(t.net.Node.NetnsPath)
	if err != nil {
		return s, err
	}
	s.InvalidDropped, s.ForwardPackets = ns.InvalidDropped, ns.ForwardPackets
	if t.dp != nil {
		if s.Local, err = t.dp.LocalCounters(); err != nil {
			return s, err
		}
		c, err := t.dp.Counters()
		if err != nil {
			return s, err
		}
		s.Socket = &c
		s.PatuBytes = c.RedirectBytes + s.Local.RedirectBytes
	}
	return s, nil
}

// sub returns what changed from b to a.
func (a snap) sub(b snap) Stats {
	d := a.Stats
	d.VethRx -= b.VethRx
	d.VethTx -= b.VethTx
	d.Local = subLocal(a.Local, b.Local)
	d.VethTx -= min(d.VethTx, d.Local.BacklogBytes)
	d.KernelCPU = a.cpu.kernelSince(b.cpu)
	d.BusyCPU = a.cpu.busySince(b.cpu)
	d.PatuBytes -= b.PatuBytes
	d.ConntrackInvalid -= b.ConntrackInvalid
	d.InvalidDropped -= b.InvalidDropped
	d.ForwardPackets -= b.ForwardPackets
	if a.Socket != nil && b.Socket != nil {
		c := *a.Socket
		c.RedirectMsgs -= b.Socket.RedirectMsgs
		c.RedirectBytes -= b.Socket.RedirectBytes
		c.SocketsInserted -= b.Socket.SocketsInserted
		c.Fallback = map[string]bpf.Traffic{}
		for k, v := range a.Socket.Fallback {
			o := b.Socket.Fallback[k]
			c.Fallback[k] = bpf.Traffic{Msgs: v.Msgs - o.Msgs, Bytes: v.Bytes - o.Bytes}
		}
		d.Socket = &c
	}
	return d
}

func subLocal(a, b bpf.LocalCounters) bpf.LocalCounters {
	a.SYNs -= b.SYNs
	a.Admitted -= b.Admitted
	a.AdmitFull -= b.AdmitFull
	a.OptedOut -= b.OptedOut
	a.RedirectPackets -= b.RedirectPackets
	a.RedirectBytes -= b.RedirectBytes
	a.RedirectBig -= b.RedirectBig
	a.BacklogPackets -= b.BacklogPackets
	a.BacklogBytes -= b.BacklogBytes
	a.ClosedFIN -= b.ClosedFIN
	a.ClosedRST -= b.ClosedRST
	a.Expired -= b.Expired
	a.WrongVeth -= b.WrongVeth
	a.AdmittedNAT -= b.AdmittedNAT
	a.NotMatched -= b.NotMatched
	a.NATFailed -= b.NATFailed
	a.ConntrackRefresh -= b.ConntrackRefresh
	a.ConntrackClose -= b.ConntrackClose
	a.ConntrackMissing -= b.ConntrackMissing
	return a
}

// cpuTimes is the aggregate "cpu" line of /proc/stat, in USER_HZ ticks.
type cpuTimes struct {
	user, nice, system, idle, iowait, irq, softirq uint64
}

// userHZ is /proc/stat's unit: USER_HZ is 100 on every Linux ABI.
const userHZ = 100

func readCPU() (cpuTimes, error) {
	data, err := os.ReadFile("/proc/stat")
	if err != nil {
		return cpuTimes{}, err
	}
	return parseCPU(string(data))
}

func parseCPU(data string) (cpuTimes, error) {
	line, _, _ := strings.Cut(data, "\n")
	f := strings.Fields(line)
	if len(f) < 8 || f[0] != "cpu" {
		return cpuTimes{}, fmt.Errorf("/proc/stat: unexpected first line %q", line)
	}
	var v [7]uint64
	for i := range v {
		n, err := strconv.ParseUint(f[i+1], 10, 64)
		if err != nil {
			return cpuTimes{}, fmt.Errorf("/proc/stat field %d: %w", i+1, err)
		}
		v[i] = n
	}
	return cpuTimes{v[0], v[1], v[2], v[3], v[4], v[5], v[6]}, nil
}

func (c cpuTimes) kernel() uint64 { return c.system + c.irq + c.softirq }

func (c cpuTimes) kernelSince(b cpuTimes) float64 {
	return float64(c.kernel()-b.kernel()) / userHZ
}

func (c cpuTimes) busySince(b cpuTimes) float64 {
	return float64(c.kernel()+c.user+c.nice-b.kernel()-b.user-b.nice) / userHZ
}

// conntrackInvalid sums the "invalid" column of /proc/net/stat/nf_conntrack
// (one hex line per CPU) in the calling thread's network namespace.
func conntrackInvalid() (uint64, error) {
	f, err := os.Open("/proc/net/stat/nf_conntrack")
	if err != nil {
		return 0, fmt.Errorf("conntrack statistics: %w", err)
	}
	defer f.Close()
	return parseConntrackInvalid(bufio.NewScanner(f))
}

func parseConntrackInvalid(sc *bufio.Scanner) (uint64, error) {
	col := -1
	var sum uint64
	for sc.Scan() {
		fields := strings.Fields(sc.Text())
		if col < 0 {
			for i, name := range fields {
				if name == "invalid" {
					col = i
				}
			}
			if col < 0 {
				return 0, fmt.Errorf("conntrack statistics: no invalid column in %q", sc.Text())
			}
			continue
		}
		if col >= len(fields) {
			return 0, fmt.Errorf("conntrack statistics: short line %q", sc.Text())
		}
		n, err := strconv.ParseUint(fields[col], 16, 64)
		if err != nil {
			return 0, fmt.Errorf("conntrack statistics: %w", err)
		}
		sum += n
	}
	if col < 0 {
		return 0, fmt.Errorf("conntrack statistics: empty")
	}
	return sum, sc.Err()
}

// nodeDo runs fn in the network namespace at path.
func nodeDo(path string, fn func() error) error { return netns.Do(path, fn) }
