#!/usr/bin/env bash
# irq-affinity.sh: pin a NIC's interrupts and set its RPS/XPS masks for
# sipshard. Run it after every boot (and after a link reset, which can
# reallocate IRQs), e.g. from a oneshot unit ordered before sipshard.
#
# Two layouts, chosen by the CPU lists you pass:
#
#  (a) IRQ CPUs = shard CPUs, e.g. `eth0 2-7 2-7`.
#      Each RX queue's IRQ, and the softirq that runs the UDP receive path,
#      lands on a shard core. Best cache locality and no idle housekeeping
#      cores, when the NIC has at least as many queues as shards
#      (`ethtool -l eth0`; `ethtool -L eth0 combined 6`). The core that
#      takes a datagram's interrupt is not necessarily the core of the shard
#      that owns its Call-ID (the kernel picks the socket by the steering
#      program, or by 4-tuple), so a datagram may still cross cores once,
#      and softirq time is taken from the shard running there. One trunk
#      (one 4-tuple) hashes to one RX queue, so one shard core then does
#      all the receive work.
#
#  (b) IRQ CPUs separate from shard CPUs, e.g. `eth0 0-1 2-7`.
#      Housekeeping cores take all interrupts and softirq work; shard cores
#      only run shards (pair with isolcpus/nohz_full, see README.md). Every
#      datagram is handed to a shard on another core (a cross-core wake-up),
#      and the housekeeping cores must keep up with the whole receive path.
#      The usual choice when the NIC has fewer queues than shards, or when
#      traffic comes from a few peers.
#
# RPS spreads receive processing in software when the NIC has fewer RX
# queues than CPUs you want doing it; it hashes by flow, so it cannot split
# one trunk either. It is off unless --rps is given. RFS does nothing for
# sipshard (its UDP sockets are unconnected; the kernel records the
# consuming CPU only for connected ones), so it is off unless --rfs.
# XPS maps each CPU that sends to its own TX queue, so shards do not
# contend for one queue's lock: on by default.

set -euo pipefail

PROG=${0##*/}
DRY_RUN=0
RPS_LIST=""
RFS_ENTRIES=0
XPS=1

usage() {
	cat <<EOF
Usage: $PROG [--dry-run] [--rps CPUS] [--rfs ENTRIES] [--no-xps] IFACE IRQ_CPUS SHARD_CPUS

Pin the IRQs of network interface IFACE to IRQ_CPUS (queue k's IRQs on the
k-th CPU of the list, wrapping), set RPS and RFS on its RX queues and XPS on
its TX queues.
CPU lists are in kernel form: "2-7", "0,2,4-6".

  IFACE        the interface sipshard's listen address is on, e.g. eth0
  IRQ_CPUS     CPUs for the NIC's interrupts (and softirq receive work)
  SHARD_CPUS   CPUs the shards are pinned to: the config's "cpus" list
               (same CPUs as IRQ_CPUS: layout (a); disjoint: layout (b))

  --dry-run    print what would be written, with the current values; write
               nothing (needs no root)
  --rps CPUS   RPS: spread receive processing of every RX queue over CPUS
               (default: RPS off, rps_cpus = 0)
  --rfs N      RFS: net.core.rps_sock_flow_entries = N, and N / queues per
               RX queue (default 0: off; sipshard's unconnected UDP sockets
               do not use it)
  --no-xps     leave the TX queues' xps_cpus alone (default: shard CPUs,
               then the other IRQ CPUs, one TX queue each, in turn)
  -h, --help   this text

IRQs are found by name in /proc/interrupts (IFACE-..., or virtioN-input/
output for virtio-net), else as the MSI vectors in
/sys/class/net/IFACE/device/msi_irqs.
Virtual devices (lo, veth, bridges) have none: only RPS/XPS are set.
irqbalance, if running, moves IRQs again: the script warns about it.
EOF
}

die() {
	printf '%s: %s\n' "$PROG" "$*" >&2
	exit 2
}

warn() {
	printf '%s: warning: %s\n' "$PROG" "$*" >&2
}

# Expands a CPU list ("0,2,4-6") into one CPU number per line.
expand_cpus() {
	local list=$1 part lo hi cpu
	local -a parts
	IFS=',' read -r -a parts <<<"$list"
	[[ ${#parts[@]} -gt 0 ]] || die "empty CPU list"
	for part in "${parts[@]}"; do
		if [[ $part =~ ^([0-9]+)-([0-9]+)$ ]]; then
			lo=${BASH_REMATCH[1]}
			hi=${BASH_REMATCH[2]}
			((lo <= hi)) || die "bad CPU range '$part'"
			for ((cpu = lo; cpu <= hi; cpu++)); do
				printf '%d\n' "$cpu"
			done
		elif [[ $part =~ ^[0-9]+$ ]]; then
			printf '%d\n' "$part"
		else
			die "bad CPU list '$list' (use e.g. 0-3,6)"
		fi
	done
}

# Fails on a CPU this machine does not have; warns on an offline one.
check_cpus() {
	local cpu
	for cpu in "$@"; do
		[[ -d /sys/devices/system/cpu/cpu$cpu ]] || die "CPU $cpu does not exist on this machine"
		if [[ -r /sys/devices/system/cpu/cpu$cpu/online ]] &&
			[[ $(<"/sys/devices/system/cpu/cpu$cpu/online") == 0 ]]; then
			warn "CPU $cpu is offline"
		fi
	done
}

# Prints the hex mask of the CPUs given, as the kernel writes cpumasks:
# 32-bit groups, most significant first, separated by commas.
cpu_mask() {
	local -a words=()
	local cpu i out="" top=0
	for cpu in "$@"; do
		i=$((cpu / 32))
		words[i]=$((${words[i]:-0} | (1 << (cpu % 32))))
		((i > top)) && top=$i
	done
	for ((i = top; i >= 0; i--)); do
		if ((i == top)); then
			out+=$(printf '%x' "${words[i]:-0}")
		else
			out+=$(printf ',%08x' "${words[i]:-0}")
		fi
	done
	printf '%s\n' "$out"
}

# Writes VALUE to FILE, or says what it would write in a dry run. A file
# the kernel refuses (a managed IRQ, a single-queue device) is a warning.
put() {
	local file=$1 value=$2 now="?"
	[[ -r $file ]] && now=$(tr '\n' ' ' <"$file" | sed 's/ *$//')
	if ((DRY_RUN)); then
		printf 'would write %-12s to %s (now: %s)\n' "$value" "$file" "$now"
		return 0
	fi
	if printf '%s\n' "$value" 2>/dev/null >"$file"; then
		printf 'wrote %-12s to %s (was: %s)\n' "$value" "$file" "$now"
	else
		warn "could not write '$value' to $file (was: $now)"
	fi
}

# Prints "IRQ NAME" per interrupt of the interface, in IRQ order.
find_irqs() {
	local iface=$1 dev driver_dev found irq
	dev=/sys/class/net/$iface/device
	# 1. Interrupts named after the interface: "eth0-TxRx-3", "eth0-rx-1",
	#    "i40e-eth0-TxRx-0", "ens5-Tx-Rx-2", "eth0" (eth1 does not match
	#    eth10).
	found=$(awk -v ifc="$iface" 'NR > 1 {
		name = $NF; irq = $1; sub(":", "", irq)
		n = length(ifc)
		for (at = index(name, ifc); at > 0; ) {
			before = (at == 1) ? "" : substr(name, at - 1, 1)
			after = substr(name, at + n, 1)
			if ((before == "" || before ~ /[-_@]/) && (after == "" || after ~ /[-_@.]/)) { print irq, name; break }
			rest = index(substr(name, at + 1), ifc)
			at = (rest > 0) ? at + rest : 0
		}
	}' /proc/interrupts | sort -n)
	if [[ -n $found ]]; then
		printf '%s\n' "$found"
		return 0
	fi
	# 2. virtio-net: named after the virtio device ("virtio0-input.0",
	#    "virtio0-output.0"), not the interface.
	if [[ -e $dev ]]; then
		driver_dev=$(basename "$(readlink -f "$dev")")
		if [[ $driver_dev == virtio* ]]; then
			awk -v v="$driver_dev" 'NR > 1 {
				irq = $1; sub(":", "", irq)
				if (index($NF, v "-input") == 1 || index($NF, v "-output") == 1) print irq, $NF
			}' /proc/interrupts | sort -n
			return 0
		fi
	fi
	# 3. Every MSI/MSI-X vector of the PCI function (mlx5 names its
	#    interrupts after the PCI address, e.g. "mlx5_comp3@pci:0000:3b:00.0").
	if [[ -d $dev/msi_irqs ]]; then
		for irq in $(find "$dev/msi_irqs" -mindepth 1 -maxdepth 1 -printf '%f\n' | sort -n); do
			printf '%s %s\n' "$irq" "$(awk -v i="$irq:" '$1 == i { print $NF }' /proc/interrupts)"
		done
	fi
	return 0
}

# The queue number in an interrupt's name, once the interface name and an
# "@..." suffix are removed: "eth0-TxRx-3" -> 3, "virtio0-input.2" -> 2,
# "mlx5_comp5@pci:..." -> 5; nothing for "eth0" (a link/misc vector).
# A misc vector ending in a number ("mlx5_async0") counts as queue 0.
queue_of() {
	local name=${2%%@*}
	name=${name//"$1"/}
	[[ $name =~ ([0-9]+)$ ]] && printf '%s\n' "${BASH_REMATCH[1]}"
	return 0
}

irqbalance_running() {
	if command -v systemctl >/dev/null 2>&1 && systemctl is-active --quiet irqbalance 2>/dev/null; then
		return 0
	fi
	if command -v pgrep >/dev/null 2>&1 && pgrep -x irqbalance >/dev/null 2>&1; then
		return 0
	fi
	return 1
}

main() {
	local -a args=()
	while (($#)); do
		case $1 in
		-h | --help)
			usage
			exit 0
			;;
		-n | --dry-run) DRY_RUN=1 ;;
		--rps)
			(($# >= 2)) || die "--rps needs a CPU list"
			RPS_LIST=$2
			shift
			;;
		--rfs)
			(($# >= 2)) || die "--rfs needs a number of entries"
			[[ $2 =~ ^[0-9]+$ ]] || die "--rfs: '$2' is not a number"
			RFS_ENTRIES=$2
			shift
			;;
		--no-xps) XPS=0 ;;
		--)
			shift
			args+=("$@")
			break
			;;
		-*) die "unknown option '$1' (see --help)" ;;
		*) args+=("$1") ;;
		esac
		shift
	done
	((${#args[@]} == 3)) || {
		usage >&2
		exit 2
	}
	local iface=${args[0]} irq_list=${args[1]} shard_list=${args[2]}
	local -a irq_cpus shard_cpus rps_cpus=() irqs rxqs txqs senders
	local cpu q i n irq

	[[ -d /sys/class/net/$iface ]] || die "no interface '$iface' (see ip -br link)"
	# Command substitution, not < <(...), so that a bad list stops here.
	local expanded
	expanded=$(expand_cpus "$irq_list") || exit 2
	mapfile -t irq_cpus <<<"$expanded"
	expanded=$(expand_cpus "$shard_list") || exit 2
	mapfile -t shard_cpus <<<"$expanded"
	check_cpus "${irq_cpus[@]}" "${shard_cpus[@]}"
	if [[ -n $RPS_LIST ]]; then
		expanded=$(expand_cpus "$RPS_LIST") || exit 2
		mapfile -t rps_cpus <<<"$expanded"
		check_cpus "${rps_cpus[@]}"
	fi
	if ((!DRY_RUN)) && ((EUID != 0)); then
		die "must run as root (or use --dry-run)"
	fi

	# Which layout the lists describe.
	local shared=0
	for cpu in "${irq_cpus[@]}"; do
		[[ " ${shard_cpus[*]} " == *" $cpu "* ]] && shared=$((shared + 1))
	done
	if [[ "${irq_cpus[*]}" == "${shard_cpus[*]}" ]]; then
		printf 'layout (a): NIC IRQs on the shard cores %s\n' "$shard_list"
	elif ((shared == 0)); then
		printf 'layout (b): NIC IRQs on %s, shards on %s\n' "$irq_list" "$shard_list"
	else
		warn "IRQ CPUs ($irq_list) and shard CPUs ($shard_list) overlap only in part; layout (a) uses the same list, (b) disjoint ones"
	fi

	if irqbalance_running; then
		warn "irqbalance is running: it will move these IRQs again within seconds." \
			"Stop it (systemctl disable --now irqbalance) or ban these CPUs" \
			"(IRQBALANCE_BANNED_CPULIST in /etc/default/irqbalance) and rerun."
	fi

	# --- IRQs ------------------------------------------------------------
	local found
	found=$(find_irqs "$iface")
	irqs=()
	[[ -z $found ]] || mapfile -t irqs <<<"$found"
	if ((${#irqs[@]} == 0)); then
		printf 'no IRQs found for %s (a virtual device such as lo, veth or a bridge has none, or the driver names its IRQs differently: see /proc/interrupts); setting RPS/XPS only\n' "$iface"
	else
		# Queue k's interrupts (RX and TX, where the driver has one each)
		# go to the k-th IRQ CPU, wrapping; others to the first.
		printf '%s: %d IRQs; queue k on CPU k of %s, wrapping\n' "$iface" "${#irqs[@]}" "$irq_list"
		local line name k
		for line in "${irqs[@]}"; do
			irq=${line%% *}
			name=${line#* }
			k=$(queue_of "$iface" "$name")
			cpu=${irq_cpus[${k:-0} % ${#irq_cpus[@]}]}
			printf 'IRQ %s (%s): CPU %s\n' "$irq" "${name:-?}" "$cpu"
			if [[ -e /proc/irq/$irq/smp_affinity_list ]]; then
				put "/proc/irq/$irq/smp_affinity_list" "$cpu"
			else
				warn "IRQ $irq has no /proc/irq/$irq/smp_affinity_list"
			fi
		done
	fi

	# --- RPS and RFS ---------------------------------------------------------
	mapfile -t rxqs < <(find "/sys/class/net/$iface/queues" -mindepth 1 -maxdepth 1 -name 'rx-*' -printf '%f\n' | sort -t- -k2 -n)
	mapfile -t txqs < <(find "/sys/class/net/$iface/queues" -mindepth 1 -maxdepth 1 -name 'tx-*' -printf '%f\n' | sort -t- -k2 -n)
	printf '%s: %d RX and %d TX queues\n' "$iface" "${#rxqs[@]}" "${#txqs[@]}"
	if [[ "${irq_cpus[*]}" == "${shard_cpus[*]}" ]] && ((${#irqs[@]} > 0)) && ((${#rxqs[@]} < ${#shard_cpus[@]})); then
		warn "layout (a) with fewer RX queues (${#rxqs[@]}) than shards (${#shard_cpus[@]}): some shard cores take no receive work; raise the queue count (ethtool -L $iface combined ${#shard_cpus[@]}), use --rps, or layout (b)"
	fi
	local rps_mask=0 flow_cnt=0
	((${#rps_cpus[@]} > 0)) && rps_mask=$(cpu_mask "${rps_cpus[@]}")
	if ((RFS_ENTRIES > 0)) && ((${#rxqs[@]} > 0)); then
		flow_cnt=$((RFS_ENTRIES / ${#rxqs[@]}))
	fi
	for q in "${rxqs[@]}"; do
		if [[ -e /sys/class/net/$iface/queues/$q/rps_cpus ]]; then
			put "/sys/class/net/$iface/queues/$q/rps_cpus" "$rps_mask"
			put "/sys/class/net/$iface/queues/$q/rps_flow_cnt" "$flow_cnt"
		else
			warn "$q has no rps_cpus (kernel without CONFIG_RPS?)"
		fi
	done
	if [[ -e /proc/sys/net/core/rps_sock_flow_entries ]]; then
		put /proc/sys/net/core/rps_sock_flow_entries "$RFS_ENTRIES"
	elif ((RFS_ENTRIES > 0)); then
		warn "no /proc/sys/net/core/rps_sock_flow_entries here (it exists only in the initial network namespace)"
	fi

	# --- XPS -------------------------------------------------------------
	# Senders: the shard CPUs (every SIP datagram leaves from a shard), then
	# the other IRQ CPUs (probes, admin API). Each gets one TX queue.
	if ((XPS)); then
		senders=("${shard_cpus[@]}")
		for cpu in "${irq_cpus[@]}"; do
			[[ " ${senders[*]} " == *" $cpu "* ]] || senders+=("$cpu")
		done
		n=${#txqs[@]}
		if ((n <= 1)); then
			printf '%s: single TX queue, XPS has nothing to choose\n' "$iface"
		else
			for ((i = 0; i < n; i++)); do
				local -a mine=()
				local j
				for ((j = i; j < ${#senders[@]}; j += n)); do
					mine+=("${senders[j]}")
				done
				local file=/sys/class/net/$iface/queues/${txqs[i]}/xps_cpus
				if [[ ! -e $file ]]; then
					warn "${txqs[i]} has no xps_cpus (kernel without CONFIG_XPS?)"
				elif ((${#mine[@]} > 0)); then
					put "$file" "$(cpu_mask "${mine[@]}")"
				else
					put "$file" 0
				fi
			done
		fi
	fi

	if ((DRY_RUN)); then
		printf 'dry run: nothing written\n'
	fi
}

main "$@"
