//! Where this process stands in the job: rank and world size from torchrun-style variables
//! (RANK, WORLD_SIZE, LOCAL_RANK, MASTER_ADDR, MASTER_PORT) or Slurm's (SLURM_PROCID,
//! SLURM_NTASKS, SLURM_LOCALID), and the exchange of NCCL's unique id over TCP from rank 0.

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

/// Rank 0 serves `id` to every other rank; the others fetch it. Gives up after `timeout`
/// with a message naming the address.
pub fn exchange_id(place: &Place, id: Option<[u8; 128]>, timeout: Duration) -> Result<[u8; 128], RuntimeError> {
    let env_err = |what: String| RuntimeError::Environment(what);
    if place.rank == 0 {
        let id = id.ok_or_else(|| env_err("rank 0 has no NCCL id to serve".into()))?;
        let listener = TcpListener::bind(&place.master)
            .map_err(|e| env_err(format!("rank 0 cannot listen on {} (MASTER_ADDR:MASTER_PORT): {e}", place.master)))?;
        listener.set_nonblocking(true).map_err(|e| env_err(e.to_string()))?;
        let deadline = Instant::now() + timeout;
        let mut served = 1;
        while served < place.world_size {
            match listener.accept() {
                Ok((mut s, _)) => {
                    s.set_nonblocking(false).map_err(|e| env_err(e.to_string()))?;
                    s.write_all(&id).map_err(|e| env_err(format!("sending the NCCL id: {e}")))?;
                    served += 1;
                }
                Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => {
                    if Instant::now() > deadline {
                        return Err(env_err(format!(
                            "only {served} of {} ranks reached rank 0 at {} within {timeout:?}",
                            place.world_size, place.master
                        )));
                    }
                    std::thread::sleep(Duration::from_millis(20));
                }
                Err(e) => return Err(env_err(format!("accepting a rank: {e}"))),
            }
        }
        Ok(id)
    } else {
        let deadline = Instant::now() + timeout;
        loop {
            match TcpStream::connect(&place.master) {
                Ok(mut s) => {
                    let mut id = [0u8; 128];
                    s.read_exact(&mut id).map_err(|e| env_err(format!("reading the NCCL id from rank 0: {e}")))?;
                    return Ok(id);
                }
                Err(_) if Instant::now() < deadline => std::thread::sleep(Duration::from_millis(50)),
                Err(e) => {
                    return Err(env_err(format!("rank {} cannot reach rank 0 at {}: {e}", place.rank, place.master)))
                }
            }
        }
    }
}
