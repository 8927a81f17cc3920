//! The copy-engine p2p transport's protocol (`runtime/src/copy_protocol.rs`), run on the
//! CPU: every rank of real plans a thread, its communication stream's steps in program
//! order, each forked branch a thread of its own, flags as atomics, arenas as bytes. Over
//! the families at 2 and 4 ranks (blocking, async with early batches and async in order,
//! and an optimised program as `compile --optimize` emits it), two
//! steps back to back as graph replays run them: nothing deadlocks, every receive ends
//! holding exactly the bytes its matched send held, and every flag is back at 0. Mutated
//! protocols (a receive never posted, a copy to the wrong place) are caught.

use pipewright_compiler::cost::CommMode;
use pipewright_compiler::emit::emit_with;
use pipewright_compiler::families::Family;
use pipewright_plan::{Dtype, Hashes, Model, Node, Plan, Training};
use pipewright_runtime::copy_protocol::{calibration_links, group_steps, links, Step};
use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, AtomicU32, Ordering::SeqCst};
use std::sync::Mutex;
use std::time::{Duration, Instant};

fn plan(family: Family, ranks: u32, m: u32, comm: CommMode) -> Plan {
    let model = Model {
        kind: "mlp".into(),
        hidden: 8,
        ffn: 16,
        seq: 3,
        microbatch_size: 2,
        layers_per_stage: 1,
        dtype: Dtype::F32,
        seed: 7,
        fuse_gelu: true,
        mirror_bf16: false,
    };
    let training = Training { optimizer: "sgd".into(), lr: 0.1, steps: 1, checkpoint_every: 0 };
    let hashes = Hashes { spec: "s".into(), programs: "p".into(), certificates: "c".into() };
    emit_with(&family.generate(ranks, m, 2), &model, &training, hashes, comm).unwrap()
}

/// What arrived somewhere: from which rank, from where in its arena, the bytes.
type Arrival = (u32, u64, Vec<u8>);

/// The ranks' memory as the protocol sees it.
struct World {
    flags: Vec<Vec<AtomicU32>>,
    arenas: Vec<Mutex<Vec<u8>>>,
    /// What the last copy into (rank, offset) brought: the sender, its offset, the bytes.
    ledger: Mutex<HashMap<(u32, u64), Arrival>>,
    deadline: Instant,
    /// Set by the first rank that fails, so that the others stop instead of waiting for it.
    failed: AtomicBool,
}

/// What a rank reports when it stopped because another failed.
const STOPPED: &str = "stopped: another rank failed";

/// How long a rank may wait for a flag before the run counts as deadlocked (generous: CI
/// machines have 2 cores for many spinning threads).
const PATIENCE: Duration = Duration::from_secs(60);

/// How a test breaks the protocol: applied to each group's steps before they run.
type Mutation = fn(&mut Vec<Step>);

fn run(world: &World, rank: u32, steps: &[Step]) -> Result<(), String> {
    for step in steps {
        match step {
            Step::Signal { peer, slot } => {
                if world.flags[*peer as usize][*slot as usize].swap(1, SeqCst) != 0 {
                    return Err(format!("rank {rank} set rank {peer}'s flag {slot}, already set"));
                }
            }
            Step::Await { slot } => {
                let flag = &world.flags[rank as usize][*slot as usize];
                while flag.compare_exchange(1, 0, SeqCst, SeqCst).is_err() {
                    if world.failed.load(SeqCst) {
                        return Err(STOPPED.into());
                    }
                    if Instant::now() > world.deadline {
                        return Err(format!("deadlock: rank {rank} waits on its flag {slot}"));
                    }
                    std::thread::sleep(Duration::from_micros(20));
                }
            }
            Step::Copy { peer, from, to, bytes } => {
                let (from, to, bytes) = (*from as usize, *to as usize, *bytes as usize);
                let data = world.arenas[rank as usize].lock().unwrap()[from..from + bytes].to_vec();
                world.arenas[*peer as usize].lock().unwrap()[to..to + bytes].copy_from_slice(&data);
                world.ledger.lock().unwrap().insert((*peer, to as u64), (rank, from as u64, data));
            }
            Step::Fork(branches) => std::thread::scope(|s| {
                let joined: Vec<_> = branches.iter().map(|(_, b)| s.spawn(move || run(world, rank, b))).collect();
                joined.into_iter().try_for_each(|h| h.join().unwrap())
            })?,
        }
    }
    Ok(())
}

/// Runs `steps` whole steps of every rank of `plan` by the protocol (a rank still waiting
/// after `patience` is deadlocked); returns how many groups forked their sends.
fn run_plan(plan: &Plan, steps: u32, mutation: Option<Mutation>, patience: Duration) -> Result<usize, String> {
    plan.validate().map_err(|e| e.to_string())?;
    // Every byte of every arena distinct enough that a copy from or to the wrong place shows.
    let arenas = plan
        .ranks
        .iter()
        .map(|r| {
            Mutex::new(
                (0..r.arena_bytes).map(|i| (i as u32).wrapping_mul(2654435761).rotate_left(r.rank * 7) as u8).collect(),
            )
        })
        .collect();
    let world = World {
        flags: plan
            .ranks
            .iter()
            .map(|r| (0..links(plan, r.rank).unwrap().len()).map(|_| AtomicU32::new(0)).collect())
            .collect(),
        arenas,
        ledger: Mutex::new(HashMap::new()),
        deadline: Instant::now() + patience,
        failed: AtomicBool::new(false),
    };
    let forks = AtomicU32::new(0);
    std::thread::scope(|s| {
        let ranks: Vec<_> = plan
            .ranks
            .iter()
            .map(|r| {
                let (world, forks) = (&world, &forks);
                s.spawn(move || {
                    let done = rank_steps(plan, r, world, forks, steps, mutation);
                    if done.is_err() {
                        world.failed.store(true, SeqCst);
                    }
                    done
                })
            })
            .collect();
        // The first failure that is not a rank stopping for another's.
        let results: Vec<Result<(), String>> = ranks.into_iter().map(|h| h.join().unwrap()).collect();
        match results.iter().find(|r| matches!(r, Err(e) if e != STOPPED)).or(results.iter().find(|r| r.is_err())) {
            Some(Err(e)) => Err(e.clone()),
            _ => Ok(()),
        }
    })?;
    for (r, flags) in world.flags.iter().enumerate() {
        if let Some(slot) = flags.iter().position(|f| f.load(SeqCst) != 0) {
            return Err(format!("rank {r}: flag {slot} still set after the steps"));
        }
    }
    Ok(forks.load(SeqCst) as usize)
}

/// One rank's `steps` steps: its groups' steps in program order, each receive checked
/// once its group is done.
fn rank_steps(
    plan: &Plan,
    r: &pipewright_plan::RankPlan,
    world: &World,
    forks: &AtomicU32,
    steps: u32,
    mutation: Option<Mutation>,
) -> Result<(), String> {
    let links = links(plan, r.rank).map_err(|e| e.to_string())?;
    for _ in 0..steps {
        for (node, n) in r.nodes.iter().enumerate() {
            let Node::Group { ops, .. } = n else { continue };
            let mut group = group_steps(&links, r.rank, node, ops.len())?;
            if group.iter().any(|s| matches!(s, Step::Fork(_))) {
                forks.fetch_add(1, SeqCst);
            }
            if let Some(mutate) = mutation {
                mutate(&mut group);
            }
            run(world, r.rank, &group)?;
            // Each receive now holds what its matched send's buffer held.
            for (op, o) in ops.iter().enumerate().filter(|(_, o)| !o.send) {
                let link = &links[&(node, op)];
                let sender = &plan.ranks[link.t.send.rank as usize];
                let want_from = (sender.rank, sender.buffers[link.t.send.buffer as usize].offset);
                let at = r.buffers[o.buffer as usize].offset;
                let ledger = world.ledger.lock().unwrap();
                let Some((from_rank, from, data)) = ledger.get(&(r.rank, at)) else {
                    return Err(format!("rank {}: node {node}: nothing arrived at {at}", r.rank));
                };
                if (*from_rank, *from) != want_from {
                    return Err(format!("rank {}: node {node}: got {from_rank}@{from}, want {want_from:?}", r.rank));
                }
                let arena = world.arenas[r.rank as usize].lock().unwrap();
                if arena[at as usize..at as usize + data.len()] != data[..] {
                    return Err(format!("rank {}: node {node}: the bytes at {at} are not the sent ones", r.rank));
                }
            }
        }
    }
    Ok(())
}

#[test]
fn every_family_moves_its_bytes_without_deadlock() {
    let mut forked = 0;
    // Async plans post batches early (after a B's input gradient), async_in_order ones after
    // the whole op: the same transfers, waited for at different points.
    for comm in [CommMode::Blocking, CommMode::Async, CommMode::AsyncInOrder] {
        for (family, ranks, m) in [
            (Family::OneFOneB, 2, 4),
            (Family::OneFOneB, 4, 8),
            (Family::GPipe, 4, 4),
            (Family::Interleaved1F1B, 4, 8),
            (Family::ZbH1, 4, 8),
            (Family::ZbV, 4, 8),
            (Family::DualPipe, 2, 4),
            (Family::DualPipe, 4, 8),
            (Family::DualPipeV, 2, 6),
            (Family::DualPipeV, 4, 8),
        ] {
            let p = plan(family, ranks, m, comm);
            forked += run_plan(&p, 2, None, PATIENCE)
                .unwrap_or_else(|e| panic!("{} {ranks} ranks {comm:?}: {e}", family.name()));
        }
    }
    // The forked sends (a group sending to two peers) ran too, not only the single-peer
    // path the 2-GPU machine runs.
    assert!(forked > 0, "no group sent to two peers");
}

#[test]
fn an_optimised_program_moves_its_bytes_without_deadlock() {
    let spec_text =
        "[pipeline]\nschedule = \"dualpipe\"\nranks = 4\nmicrobatches = 8\n[costs]\ncomm = \"async\"\np2p = 0.1\n";
    let spec = pipewright_compiler::spec::parse("t.toml", spec_text).unwrap();
    let options = pipewright_compiler::optimize::Options { time_limit: 1.0, ..Default::default() };
    let compiled = pipewright_compiler::compile_with(spec, Some(&options)).unwrap();
    let model = plan(Family::DualPipe, 4, 8, CommMode::Async).model;
    let training = Training { optimizer: "sgd".into(), lr: 0.1, steps: 1, checkpoint_every: 0 };
    let hashes = Hashes { spec: "s".into(), programs: "p".into(), certificates: "c".into() };
    // Emitted as `compile` emits it: planned in order under async (`async_in_order`) unless
    // `[optimize] early_batches` says otherwise.
    assert_eq!(compiled.dag.comm, CommMode::AsyncInOrder);
    let p = emit_with(&compiled.programs, &model, &training, hashes, compiled.dag.comm).unwrap();
    run_plan(&p, 2, None, PATIENCE).unwrap();
}

#[test]
fn a_broken_protocol_is_caught() {
    let p = plan(Family::DualPipe, 4, 8, CommMode::Async);
    // A receive that never tells its sender the buffer is free: the sender waits forever.
    fn unposted(steps: &mut Vec<Step>) {
        if let Some(i) = steps.iter().position(|s| matches!(s, Step::Signal { .. })) {
            steps.remove(i);
        }
    }
    let err = run_plan(&p, 1, Some(unposted), Duration::from_secs(2)).unwrap_err();
    assert!(err.contains("deadlock"), "{err}");
    // A copy that lands one element off.
    #[allow(clippy::ptr_arg)] // a `Mutation`, like `unposted`, which removes
    fn shifted(steps: &mut Vec<Step>) {
        fn shift(steps: &mut [Step]) {
            for s in steps {
                match s {
                    Step::Copy { to, .. } => *to += 4,
                    Step::Fork(branches) => branches.iter_mut().for_each(|(_, b)| shift(b)),
                    _ => {}
                }
            }
        }
        shift(steps)
    }
    let err = run_plan(&p, 1, Some(shifted), Duration::from_secs(2)).unwrap_err();
    assert!(err.contains("nothing arrived") || err.contains("not the sent ones"), "{err}");
}

#[test]
fn calibration_copies_land_in_distinct_receive_buffers_of_their_size() {
    // DualPipe at 4 ranks sends activations and gradients (2 · 3 · 8 · 4 bytes) between
    // neighbours: each calibration copy goes from one of the rank's send buffers to a
    // receive buffer of the peer's that the plan pairs with it, never the same one twice.
    let plan = plan(Family::DualPipe, 4, 8, CommMode::Async);
    let bytes = 2 * 3 * 8 * 4;
    for (rank, peer) in [(0, 1), (1, 0), (2, 3), (3, 2)] {
        let copies = calibration_links(&plan, rank, peer, bytes).unwrap();
        assert!(!copies.is_empty(), "rank {rank} → {peer}");
        let sent: Vec<(u64, u64)> = links(&plan, rank)
            .unwrap()
            .into_values()
            .filter(|l| l.t.send.rank == rank && l.t.recv.rank == peer)
            .map(|l| (l.from, l.to))
            .collect();
        let received: Vec<u64> =
            plan.ranks[peer as usize].buffers.iter().filter(|b| b.bytes == bytes).map(|b| b.offset).collect();
        for c in &copies {
            assert!(sent.contains(c), "{c:?} is not a transfer of the plan");
            assert!(received.contains(&c.1), "{c:?} lands outside a receive buffer of its size");
        }
        let mut to: Vec<u64> = copies.iter().map(|c| c.1).collect();
        to.dedup();
        assert_eq!(to.len(), copies.len(), "sorted by destination, each once");
        assert_eq!(to.len(), sent.iter().map(|s| s.1).collect::<std::collections::BTreeSet<_>>().len());
    }
    // Nothing of another size, nor to a rank it does not send to.
    assert!(calibration_links(&plan, 0, 1, bytes + 4).unwrap().is_empty());
    assert!(calibration_links(&plan, 0, 2, bytes).unwrap().is_empty());
}
