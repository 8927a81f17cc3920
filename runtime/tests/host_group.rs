//! The ranks' TCP group (`launch::HostGroup`), on threads: what carries NCCL's id, the
//! transport check, the copy engines' IPC handles and the barriers of ranks sharing GPUs.

use pipewright_runtime::launch::{HostGroup, Place};
use std::time::Duration;

fn place(rank: u32, world_size: u32, port: u16) -> Place {
    Place { rank, world_size, local_rank: rank, master: format!("127.0.0.1:{port}") }
}

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port()
}

/// Runs `body` as each of `world` ranks on its own thread, joined into one group; returns
/// each rank's result in rank order.
fn ranks<T: Send + 'static>(
    world: u32,
    timeout: Duration,
    body: impl Fn(u32, HostGroup) -> T + Send + Sync + Clone + 'static,
) -> Vec<Result<T, String>> {
    let port = free_port();
    let threads: Vec<_> = (0..world)
        .map(|r| {
            let body = body.clone();
            std::thread::spawn(move || {
                let g = HostGroup::join(&place(r, world, port), timeout).map_err(|e| e.to_string())?;
                Ok(body(r, g))
            })
        })
        .collect();
    threads.into_iter().map(|t| t.join().unwrap()).collect()
}

#[test]
fn every_rank_gathers_every_record_in_rank_order() {
    let out = ranks(4, Duration::from_secs(20), |r, g| {
        let mine = [r as u8; 3];
        let first = g.all_gather(&mine).unwrap();
        // Again, to show the streams stay usable and in step.
        g.barrier().unwrap();
        let second = g.all_gather(&[10 + r as u8]).unwrap();
        (first, second)
    });
    for result in out {
        let (first, second) = result.unwrap();
        assert_eq!(first, vec![0, 0, 0, 1, 1, 1, 2, 2, 2, 3, 3, 3]);
        assert_eq!(second, vec![10, 11, 12, 13]);
    }
}

#[test]
fn rank_zeros_id_reaches_every_rank() {
    let out = ranks(3, Duration::from_secs(20), |r, g| {
        let id = (r == 0).then_some([7u8; 128]);
        g.broadcast_id(id).unwrap()
    });
    for id in out {
        assert_eq!(id.unwrap(), [7u8; 128]);
    }
}

#[test]
fn records_of_different_lengths_are_refused_naming_the_rank() {
    let out =
        ranks(2, Duration::from_secs(20), |r, g| g.all_gather(&vec![0u8; 1 + r as usize]).map_err(|e| e.to_string()));
    let err = out[0].as_ref().unwrap().as_ref().unwrap_err();
    assert!(err.contains("rank 1 sent 2 bytes where rank 0 sent 1"), "{err}");
    // Rank 1 hears nothing back: rank 0 stopped; it fails too, instead of hanging.
    assert!(out[1].as_ref().unwrap().is_err());
}

#[test]
fn a_rank_that_never_comes_is_named_after_the_timeout() {
    let port = free_port();
    let err = HostGroup::join(&place(0, 3, port), Duration::from_millis(300)).unwrap_err().to_string();
    assert!(err.contains("ranks 1, 2 did not reach rank 0"), "{err}");
}

#[test]
fn a_peer_that_falls_silent_is_an_error_not_a_hang() {
    // Rank 1 joins and then never takes part: rank 0's gather ends after the timeout,
    // naming it.
    let out = ranks(2, Duration::from_millis(500), |r, g| {
        if r == 0 {
            Some(g.all_gather(&[1]).unwrap_err().to_string())
        } else {
            std::thread::sleep(Duration::from_millis(1500));
            None
        }
    });
    let err = out[0].as_ref().unwrap().as_ref().unwrap();
    assert!(err.contains("no word from rank 1"), "{err}");
}

#[test]
fn a_rank_joining_twice_is_refused() {
    let port = free_port();
    let zero = std::thread::spawn(move || HostGroup::join(&place(0, 3, port), Duration::from_secs(10)));
    let twins: Vec<_> = (0..2)
        .map(|_| std::thread::spawn(move || HostGroup::join(&place(1, 3, port), Duration::from_secs(10))))
        .collect();
    let err = zero.join().unwrap().unwrap_err().to_string();
    assert!(err.contains("joined as rank 1") && err.contains("joined twice"), "{err}");
    drop(twins);
}
