package devcluster

import (
	"errors"
	"fmt"
	"math/rand/v2"
	"net"

	"github.com/vishvananda/netlink"
	"golang.org/x/sys/unix"
)

// The hosts' /24 is picked at random among 10.200.0.0/24 … 10.250.255.0/24,
// a range unlikely to be used by the machine or by a VPN, and checked against
// the machine's addresses and routes.
const (
	subnetSecondOctetMin = 200
	subnetSecondOctetMax = 250
	// maxNodes is what fits in a /24 once .0, .1 (the bridge) and .255 are taken.
	maxNodes = 253
)

// MaxNodes is how many simulated hosts one cluster can have (they share a /24), for
// commands to check their arguments against.
const MaxNodes = maxNodes

// pickSubnet returns a random /24 from the hosts' range that overlaps none of
// the taken networks. It scans the whole range from a random start, so it
// finds a free /24 whenever one exists.
func pickSubnet(taken []*net.IPNet, rnd *rand.Rand) (*net.IPNet, error) {
	const count = (subnetSecondOctetMax - subnetSecondOctetMin + 1) * 256
	start := rnd.IntN(count)
	for i := range count {
		k := (start + i) % count
		candidate := &net.IPNet{
			IP:   net.IPv4(10, byte(subnetSecondOctetMin+k/256), byte(k%256), 0).To4(),
			Mask: net.CIDRMask(24, 32),
		}
		if !overlapsAny(candidate, taken) {
			return candidate, nil
		}
	}
	return nil, fmt.Errorf("every /24 in 10.%d.0.0-10.%d.255.0 is in use: remove stale bridges (ip -br link | grep ssib) or unused addresses",
		subnetSecondOctetMin, subnetSecondOctetMax)
}

func overlapsAny(n *net.IPNet, taken []*net.IPNet) bool {
	for _, t := range taken {
		if t.Contains(n.IP) || n.Contains(t.IP) {
			return true
		}
	}
	return false
}

// hostIP is the address of the node with the given 1-based index: the
// bridge has .1, node k has .(k+1).
func hostIP(subnet *net.IPNet, index int) net.IP {
	ip := make(net.IP, 4)
	copy(ip, subnet.IP.To4())
	ip[3] = byte(index + 1)
	return ip
}

// takenIPv4Nets lists the IPv4 networks the machine already uses: its
// addresses (as their prefixes) and its routes in every table, less default
// routes, which would overlap everything.
func takenIPv4Nets() ([]*net.IPNet, error) {
	var taken []*net.IPNet
	addrs, err := netlink.AddrList(nil, netlink.FAMILY_V4)
	if err != nil {
		return nil, fmt.Errorf("list the machine's addresses: %w", err)
	}
	for _, a := range addrs {
		if a.IPNet != nil {
			taken = append(taken, &net.IPNet{IP: a.IP.Mask(a.Mask), Mask: a.Mask})
		}
	}
	routes, err := netlink.RouteListFiltered(netlink.FAMILY_V4,
		&netlink.Route{Table: unix.RT_TABLE_UNSPEC}, netlink.RT_FILTER_TABLE)
	if err != nil {
		return nil, fmt.Errorf("list the machine's routes: %w", err)
	}
	for _, r := range routes {
		if r.Dst == nil {
			continue
		}
		if ones, _ := r.Dst.Mask.Size(); ones == 0 {
			continue
		}
		taken = append(taken, r.Dst)
	}
	return taken, nil
}

// linkMTU is the MTU of the simulated hosts' links, that of the loopback interface: the hosts
// share one machine, as programs talking over loopback do (the peers ssi is compared with were
// measured that way), and with 1,500-byte frames every segment of a bulk stream crossed the
// veths and the bridge in pieces (a 1 GiB ssi run stream went from 0.80–0.94 to 0.97–1.24 GB/s).
const linkMTU = 65535

// createBridge makes the cluster's bridge with the gateway address (.1) of
// the subnet, so the machine itself can reach every host directly. made
// tells whether the bridge exists because of this call, even on error: a
// bridge of that name that existed before is not ours to delete.
func createBridge(name string, subnet *net.IPNet) (made bool, err error) {
	bridge := &netlink.Bridge{LinkAttrs: netlink.LinkAttrs{Name: name, MTU: linkMTU}}
	if err := netlink.LinkAdd(bridge); err != nil {
		return false, fmt.Errorf("create bridge %s: %w", name, err)
	}
	addr := &netlink.Addr{IPNet: &net.IPNet{IP: hostIP(subnet, 0), Mask: subnet.Mask}}
	if err := netlink.AddrAdd(bridge, addr); err != nil {
		return true, fmt.Errorf("add %s to bridge %s: %w", addr.IPNet, name, err)
	}
	if err := netlink.LinkSetUp(bridge); err != nil {
		return true, fmt.Errorf("set bridge %s up: %w", name, err)
	}
	return true, nil
}

// createVeth makes a veth pair whose host end is a port of the bridge and is
// up; the peer stays in the machine's namespace until it is moved into a host.
func createVeth(hostEnd, peerEnd, bridge string) error {
	br, err := netlink.LinkByName(bridge)
	if err != nil {
		return fmt.Errorf("find bridge %s: %w", bridge, err)
	}
	veth := &netlink.Veth{
		LinkAttrs: netlink.LinkAttrs{Name: hostEnd, MasterIndex: br.Attrs().Index, MTU: linkMTU},
		PeerName:  peerEnd,
		PeerMTU:   linkMTU,
	}
	if err := netlink.LinkAdd(veth); err != nil {
		return fmt.Errorf("create veth pair %s/%s: %w", hostEnd, peerEnd, err)
	}
	if err := netlink.LinkSetUp(veth); err != nil {
		return fmt.Errorf("set %s up: %w", hostEnd, err)
	}
	return nil
}

// moveLinkToHost moves a link of the machine's namespace into the network
// namespace of the process pid.
func moveLinkToHost(name string, pid int) error {
	link, err := netlink.LinkByName(name)
	if err != nil {
		return fmt.Errorf("find %s: %w", name, err)
	}
	if err := netlink.LinkSetNsPid(link, pid); err != nil {
		return fmt.Errorf("move %s into the namespace of pid %d: %w", name, pid, err)
	}
	return nil
}

// setLinkUp sets a link of the machine's namespace up or down.
func setLinkUp(name string, up bool) error {
	link, err := netlink.LinkByName(name)
	if err != nil {
		return fmt.Errorf("find %s: %w", name, err)
	}
	if up {
		err = netlink.LinkSetUp(link)
	} else {
		err = netlink.LinkSetDown(link)
	}
	if err != nil {
		return fmt.Errorf("set %s up=%t: %w", name, up, err)
	}
	return nil
}

// deleteLink removes a link if it exists. Deleting one end of a veth pair
// removes both, even when the other end is in another namespace.
func deleteLink(name string) error {
	link, err := netlink.LinkByName(name)
	if err != nil {
		if _, ok := errors.AsType[netlink.LinkNotFoundError](err); ok {
			return nil
		}
		return fmt.Errorf("find %s: %w", name, err)
	}
	if err := netlink.LinkDel(link); err != nil && !errors.Is(err, unix.ENODEV) {
		return fmt.Errorf("delete %s: %w", name, err)
	}
	return nil
}

// linkExists reports whether a link of that name is in the machine's namespace.
func linkExists(name string) bool {
	_, err := netlink.LinkByName(name)
	return err == nil
}

// configureHostNetwork runs inside a host's network namespace: it renames the
// link the harness moved in to eth0, gives it the host's address and sets it
// and lo up.
func configureHostNetwork(linkName, cidr string) error {
	lo, err := netlink.LinkByName("lo")
	if err != nil {
		return fmt.Errorf("find lo: %w", err)
	}
	if err := netlink.LinkSetUp(lo); err != nil {
		return fmt.Errorf("set lo up: %w", err)
	}
	link, err := netlink.LinkByName(linkName)
	if err != nil {
		return fmt.Errorf("find %s moved in by the harness: %w", linkName, err)
	}
	if err := netlink.LinkSetName(link, "eth0"); err != nil {
		return fmt.Errorf("rename %s to eth0: %w", linkName, err)
	}
	addr, err := netlink.ParseAddr(cidr)
	if err != nil {
		return fmt.Errorf("parse host address %q: %w", cidr, err)
	}
	if err := netlink.AddrAdd(link, addr); err != nil {
		return fmt.Errorf("add %s to eth0: %w", cidr, err)
	}
	if err := netlink.LinkSetUp(link); err != nil {
		return fmt.Errorf("set eth0 up: %w", err)
	}
	return nil
}
