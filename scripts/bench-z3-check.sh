#!/usr/bin/env bash
# Times `pipewright compile` (with verification and certificates) and `pipewright check`
# (z3 re-checking the certificates) for dualpipev, 64 ranks × 512 microbatches.
set -euo pipefail
cd "$(dirname "$0")/.."
cargo build --release --quiet
dir=$(mktemp -d)
cat > "$dir/big.toml" <<'SPEC'
[pipeline]
schedule = "dualpipev"
ranks = 64
microbatches = 512

[memory]
activation = 1_000_000
weight_grad_part = 400_000
parameters = 100_000_000
p2p_buffer = 100_000
budget = 1_000_000_000_000
SPEC
echo "compile (generate, simulate, verify, certificates, SVG, trace):"
/usr/bin/time -f "  %e s, %M KiB peak RSS" ./target/release/pipewright compile "$dir/big.toml" -o "$dir/plan" >/dev/null
ls -l "$dir/plan/proof" | awk 'NR>1 {printf "  %s %d bytes\n", $9, $5}'
echo "check (z3 on every certificate):"
/usr/bin/time -f "  %e s total, %M KiB peak RSS" ./target/release/pipewright check "$dir/plan"
rm -rf "$dir"
