# shellcheck shell=bash
# Shared pieces of scripts/bench-send and scripts/bench-check. Source it; do not run it.
#
# Expects ROOT (the repo) to be set by the caller. Provides:
#   log, die                    messages to stderr
#   apt_update_once, apt_install, apt_download
#   ensure_time                 /usr/bin/time (Debian `time`)
#   build_mailer                cargo build --release; sets MAILER
#   gen_supporters N FILE       scripts/gen-supporters (addresses in BENCH_DOMAIN)
#   write_letter FILE STYLE     the ~1.5 KB benchmark letter; STYLE tera|jinja
#   write_mailer_campaign DIR HOST PORT CONCURRENCY INSECURE(0|1) SUPPORTERS.csv
#   measure LOG CMD...          runs CMD under /usr/bin/time -v; sets M_SECS M_RSS_KB M_RC
#   median NUMBERS...           prints the median

# The domain of every made-up address (supporters, sender, target), under
# which each gets its own subdomain. `example` (reserved, RFC 2606) by
# default; a caller whose relay is not loopback sets `internal`:
# `send` refuses placeholder addresses there, and `.internal` is reserved
# for private use (ICANN, 2024), so it is no placeholder and never a real
# public domain either.
BENCH_DOMAIN=${BENCH_DOMAIN:-example}

# Set by measure(); read by the callers.
# shellcheck disable=SC2034
M_SECS=0 M_RSS_KB=0 M_RC=0

log() { printf '[bench] %s\n' "$*" >&2; }
die() {
	printf '[bench] error: %s\n' "$*" >&2
	exit 1
}

APT_UPDATED=0
apt_update_once() {
	if [[ $APT_UPDATED -eq 0 ]]; then
		log "apt-get update"
		apt-get update -qq >/dev/null
		APT_UPDATED=1
	fi
}

# apt_install PKG... — install Debian packages (root), updating the lists once if needed.
apt_install() {
	if ! DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "$@" >/dev/null 2>&1; then
		apt_update_once
		DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "$@" >/dev/null
	fi
}

# apt_download DIR PKG... — fetch .deb files into DIR without installing them.
apt_download() {
	local dir=$1
	shift
	mkdir -p "$dir"
	if ! (cd "$dir" && apt-get download -o APT::Sandbox::User=root "$@" >/dev/null 2>&1); then
		apt_update_once
		(cd "$dir" && apt-get download -o APT::Sandbox::User=root "$@" >/dev/null)
	fi
}

ensure_time() {
	if [[ ! -x /usr/bin/time ]]; then
		log "installing Debian 'time' (for peak RSS)"
		apt_install time
	fi
}

# build_mailer — cargo build --release in ROOT; sets MAILER to the binary.
build_mailer() {
	log "cargo build --release"
	(cd "$ROOT" && cargo build --release --quiet) || die "cargo build --release failed"
	local target_dir=${CARGO_TARGET_DIR:-$ROOT/target}
	[[ $target_dir == /* ]] || target_dir=$ROOT/$target_dir
	MAILER=$target_dir/release/mailer
	[[ -x $MAILER ]] || die "no binary at $MAILER after the build"
}

gen_supporters() {
	"$ROOT/scripts/gen-supporters" "$1" "$2" "supporters.$BENCH_DOMAIN"
}

# write_letter FILE tera|jinja — the benchmark letter (~1.4 KB body; ~1.8 KB
# with headers). The same words for mailer (Tera context: supporter.*, target.*)
# and mailmerge (Jinja, flat columns: name, city, target_name).
write_letter() {
	local file=$1 style=$2 name city target
	if [[ $style == tera ]]; then
		name='{{ supporter.name }}' city='{{ supporter.city }}' target='{{ target.name }}'
	else
		name='{{ name }}' city='{{ city }}' target='{{ target_name }}'
	fi
	mkdir -p "$(dirname "$file")"
	cat >"$file" <<EOF
Dear $target,

My name is $name, and I am writing to you from $city as one of the many
people who use your company's products every day and who believe that a
technology company should not lend its tools to the separation of families.

Your company holds a contract worth about 19.4 million dollars to supply
cloud services to Immigration and Customs Enforcement. Those services help an
agency that has held children apart from their parents at the border, that
detains people for months without a hearing, and that has made whole
communities afraid to send their children to school or to see a doctor.

You have said that your company wants to empower every person on the planet
to achieve more. The families now waiting in detention centres are among
those people. Selling the infrastructure of their detention is not neutral,
and it does not become neutral because it is delivered as a service.

Many of your own employees have already asked you to cancel this contract.
I am adding my voice to theirs. I ask you to end the contract with ICE, to
publish the terms of any remaining work with the agency, and to commit that
your products will not be used to track, detain or deport immigrants.

I will be following your answer closely, and so will my friends and
neighbours in $city. I hope to hear that you have chosen to stand with
families rather than with the agency that separates them.

Sincerely,
$name
$city
EOF
}

# write_mailer_campaign DIR HOST PORT CONCURRENCY INSECURE SUPPORTERS_CSV
write_mailer_campaign() {
	local dir=$1 host=$2 port=$3 conc=$4 insecure=$5 csv=$6
	mkdir -p "$dir/letters"
	write_letter "$dir/letters/letter.txt" tera
	cp "$csv" "$dir/supporters.csv"
	local insecure_line=""
	if [[ $insecure -eq 1 ]]; then
		insecure_line='allow_insecure = true'
	fi
	cat >"$dir/mailer.toml" <<EOF
# Generated by scripts/bench-*: a benchmark campaign, no auth, no limits.
[campaign]
id = "bench"
name = "Benchmark: tell Microsoft to drop ICE"
org = "Bench Org"
letter = "letters/letter.txt"
subject = "{{ supporter.name }} from {{ supporter.city }}: cancel the ICE contract"

[sender]
from = "{{ supporter.name }} via Bench Org <letters@bench.$BENCH_DOMAIN>"
reply_to = "{{ supporter.email }}"

[[targets]]
name = "Satya Nadella"
email = "satya.nadella@microsoft.$BENCH_DOMAIN"

[supporters]
file = "supporters.csv"

[smtp]
host = "$host"
port = $port
security = "none"
timeout_secs = 30
$insecure_line

[delivery]
concurrency = $conc
EOF
}

# measure LOG TIMEOUT CMD... — run CMD (stdin /dev/null, stdout+stderr to LOG)
# under /usr/bin/time -v and `timeout`. Sets M_SECS (wall, from the clock, ns
# precision), M_RSS_KB (peak RSS of the largest process in the tree: time's
# child is `timeout`, whose rusage covers CMD) and M_RC (CMD's exit code).
measure() {
	local logf=$1 limit=$2
	shift 2
	local tf=$logf.time t0 t1
	M_RC=0
	t0=$(date +%s%N)
	/usr/bin/time -v -o "$tf" timeout -k 5 "$limit" "$@" >"$logf" 2>&1 </dev/null || M_RC=$?
	t1=$(date +%s%N)
	M_SECS=$(awk -v a="$t0" -v b="$t1" 'BEGIN { printf "%.4f", (b - a) / 1e9 }')
	M_RSS_KB=$(awk -F': ' '/Maximum resident set size/ { print $2 }' "$tf")
	M_RSS_KB=${M_RSS_KB:-0}
}

median() {
	printf '%s\n' "$@" | sort -g | awk '{ v[NR] = $1 } END { if (NR == 0) print "nan"; else if (NR % 2) print v[(NR + 1) / 2]; else print (v[NR / 2] + v[NR / 2 + 1]) / 2 }'
}
