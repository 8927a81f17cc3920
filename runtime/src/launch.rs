//! Where this process stands in the job: rank and world size from torchrun-style variables
//! (RANK, WORLD_SIZE, LOCAL_RANK, MASTER_ADDR, MASTER_PORT) or Slurm's (SLURM_PROCID,
//! SLURM_NTASKS, SLURM_LOCALID), and the ranks joined over TCP through rank 0 ([`HostGroup`]:
//! NCCL's unique id, the copy-engine transport's handles, barriers without NCCL).

use crate::RuntimeError;
use std::io::{Read, Write};
use std::net::{TcpListener, TcpStream};
use std::time::{Duration, Instant};

/// This process's place in the job.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Place {
    pub rank: u32,
    pub world_size: u32,
    pub local_rank: u32,
    pub master: String,
}

impl Place {
    /// Reads the launch variables through `get` (the process environment in practice).
    pub fn from_env(get: impl Fn(&str) -> Option<String>) -> Result<Place, RuntimeError> {
        let num = |keys: &[&str]| -> Result<Option<u32>, RuntimeError> {
            for k in keys {
                if let Some(v) = get(k) {
                    return v
                        .trim()
                        .parse()
                        .map(Some)
                        .map_err(|_| RuntimeError::Environment(format!("{k}={v} is not a non-negative integer")));
                }
            }
            Ok(None)
        };
        let world_size = num(&["WORLD_SIZE", "SLURM_NTASKS"])?.unwrap_or(1);
        let rank = num(&["RANK", "SLURM_PROCID"])?.unwrap_or(0);
        let local_rank = num(&["LOCAL_RANK", "SLURM_LOCALID"])?.unwrap_or(rank);
        if world_size == 0 || rank >= world_size {
            return Err(RuntimeError::Environment(format!(
                "rank {rank} is not in a world of {world_size}; set RANK < WORLD_SIZE (or SLURM_PROCID < SLURM_NTASKS)"
            )));
        }
        let addr = get("MASTER_ADDR").unwrap_or_else(|| "127.0.0.1".into());
        let port = get("MASTER_PORT").unwrap_or_else(|| "29500".into());
        Ok(Place { rank, world_size, local_rank, master: format!("{addr}:{port}") })
    }
}

/// The job's ranks joined over TCP through rank 0 (at MASTER_ADDR:MASTER_PORT, which
/// every other rank connects to): what carries NCCL's unique id, the checks that every rank
/// runs the same transport, the copy-engine transport's IPC handles, and the barriers of
/// ranks that share GPUs and so have no NCCL communicator (NCCL refuses two ranks on one
/// GPU). Small host-side messages only; a peer silent for `timeout` is an error naming it.
#[derive(Debug)]
pub struct HostGroup {
    rank: u32,
    world_size: u32,
    /// Rank 0: the stream of every other rank, in rank order; the others: rank 0's.
    links: Vec<TcpStream>,
    timeout: Duration,
}

impl HostGroup {
    /// Joins every rank of `place`'s job (each calls this once); gives up after `timeout`
    /// with a message naming the address and the ranks missing.
    pub fn join(place: &Place, timeout: Duration) -> Result<HostGroup, RuntimeError> {
        let links =
            if place.rank == 0 { accept_ranks(place, timeout)? } else { vec![connect_to_rank0(place, timeout)?] };
        Ok(HostGroup { rank: place.rank, world_size: place.world_size, links, timeout })
    }

    /// Every rank's `mine`, in rank order (every rank calls this, with records of one
    /// length: a rank whose record differs in length is refused, naming it).
    pub fn all_gather(&self, mine: &[u8]) -> Result<Vec<u8>, RuntimeError> {
        let fail = |peer: u32, e: std::io::Error| {
            RuntimeError::Environment(format!(
                "rank {}: no word from rank {peer} over TCP within {:?} ({e}); has it died? see its log",
                self.rank, self.timeout
            ))
        };
        if self.rank == 0 {
            let mut all = mine.to_vec();
            for (i, mut s) in self.links.iter().enumerate() {
                let theirs = read_record(&mut s).map_err(|e| fail(i as u32 + 1, e))?;
                if theirs.len() != mine.len() {
                    return Err(RuntimeError::Environment(format!(
                        "rank {} sent {} bytes where rank 0 sent {}: the ranks run different builds or options",
                        i + 1,
                        theirs.len(),
                        mine.len()
                    )));
                }
                all.extend(theirs);
            }
            for (i, mut s) in self.links.iter().enumerate() {
                write_record(&mut s, &all).map_err(|e| fail(i as u32 + 1, e))?;
            }
            Ok(all)
        } else {
            let mut s = &self.links[0];
            write_record(&mut s, mine).map_err(|e| fail(0, e))?;
            let all = read_record(&mut s).map_err(|e| fail(0, e))?;
            if all.len() != mine.len() * self.world_size as usize {
                return Err(RuntimeError::Environment(format!(
                    "rank {}: rank 0 gathered {} bytes, not {} records of {}: the ranks run different builds or options",
                    self.rank,
                    all.len(),
                    self.world_size,
                    mine.len()
                )));
            }
            Ok(all)
        }
    }

    /// Rank 0's `id` (what it passes; the others pass none), on every rank.
    pub fn broadcast_id(&self, id: Option<[u8; 128]>) -> Result<[u8; 128], RuntimeError> {
        if self.rank == 0 && id.is_none() {
            return Err(RuntimeError::Environment("rank 0 has no NCCL id to serve".into()));
        }
        let all = self.all_gather(&id.unwrap_or([0; 128]))?;
        let mut out = [0u8; 128];
        out.copy_from_slice(&all[..128]);
        Ok(out)
    }

    /// Returns once every rank has called it.
    pub fn barrier(&self) -> Result<(), RuntimeError> {
        self.all_gather(&[]).map(|_| ())
    }
}

/// Rank 0's side of [`HostGroup::join`]: every other rank's stream, in rank order, each
/// rank known by the number it sends first.
fn accept_ranks(place: &Place, timeout: Duration) -> Result<Vec<TcpStream>, RuntimeError> {
    let listener = TcpListener::bind(&place.master).map_err(|e| {
        RuntimeError::Environment(format!("rank 0 cannot listen on {} (MASTER_ADDR:MASTER_PORT): {e}", place.master))
    })?;
    listener.set_nonblocking(true).map_err(|e| RuntimeError::Environment(e.to_string()))?;
    let deadline = Instant::now() + timeout;
    let mut joined: Vec<Option<TcpStream>> = (1..place.world_size).map(|_| None).collect();
    while joined.iter().any(Option::is_none) {
        match listener.accept() {
            Ok((mut s, from)) => {
                s.set_nonblocking(false).map_err(|e| RuntimeError::Environment(e.to_string()))?;
                s.set_read_timeout(Some(timeout)).map_err(|e| RuntimeError::Environment(e.to_string()))?;
                let mut word = [0u8; 4];
                s.read_exact(&mut word)
                    .map_err(|e| RuntimeError::Environment(format!("reading a rank's number from {from}: {e}")))?;
                let r = u32::from_le_bytes(word);
                match joined.get_mut((r as usize).wrapping_sub(1)) {
                    Some(slot @ None) => *slot = Some(s),
                    _ => {
                        return Err(RuntimeError::Environment(format!(
                            "{from} joined as rank {r}, which is not a rank of this world of {} or joined twice; \
                             give each process its own RANK < WORLD_SIZE",
                            place.world_size
                        )))
                    }
                }
            }
            Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => {
                if Instant::now() > deadline {
                    let missing: Vec<String> = joined
                        .iter()
                        .enumerate()
                        .filter(|(_, s)| s.is_none())
                        .map(|(i, _)| (i + 1).to_string())
                        .collect();
                    return Err(RuntimeError::Environment(format!(
                        "ranks {} did not reach rank 0 at {} within {timeout:?}",
                        missing.join(", "),
                        place.master
                    )));
                }
                std::thread::sleep(Duration::from_millis(20));
            }
            Err(e) => return Err(RuntimeError::Environment(format!("accepting a rank: {e}"))),
        }
    }
    Ok(joined.into_iter().flatten().collect())
}

/// Another rank's side of [`HostGroup::join`]: its stream to rank 0, once it has sent its
/// number.
fn connect_to_rank0(place: &Place, timeout: Duration) -> Result<TcpStream, RuntimeError> {
    let deadline = Instant::now() + timeout;
    loop {
        match TcpStream::connect(&place.master) {
            Ok(mut s) => {
                s.set_read_timeout(Some(timeout)).map_err(|e| RuntimeError::Environment(e.to_string()))?;
                s.write_all(&place.rank.to_le_bytes())
                    .map_err(|e| RuntimeError::Environment(format!("rank {} joining rank 0: {e}", place.rank)))?;
                return Ok(s);
            }
            Err(_) if Instant::now() < deadline => std::thread::sleep(Duration::from_millis(50)),
            Err(e) => {
                return Err(RuntimeError::Environment(format!(
                    "rank {} cannot reach rank 0 at {}: {e}",
                    place.rank, place.master
                )))
            }
        }
    }
}

/// One length-prefixed message.
fn write_record(s: &mut impl Write, bytes: &[u8]) -> std::io::Result<()> {
    s.write_all(&(bytes.len() as u64).to_le_bytes())?;
    s.write_all(bytes)?;
    s.flush()
}

/// One length-prefixed message (at most 1 GiB: this carries handles and ids, not data).
fn read_record(s: &mut impl Read) -> std::io::Result<Vec<u8>> {
    let mut len = [0u8; 8];
    s.read_exact(&mut len)?;
    let len = u64::from_le_bytes(len);
    if len > 1 << 30 {
        return Err(std::io::Error::new(std::io::ErrorKind::InvalidData, format!("a message of {len} bytes")));
    }
    let mut out = vec![0u8; len as usize];
    s.read_exact(&mut out)?;
    Ok(out)
}
