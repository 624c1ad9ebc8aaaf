//! The handshake worker pool: the responder's expensive steps (the DH that
//! opens an initiation; the ephemeral key and two DH of the response) run on
//! worker threads, so a flood of initiations cannot starve the daemon's one
//! task (timers, UAPI, metrics). The task keeps every decision that touches
//! state (admission, peer lookup, timestamps, indexes, sessions); workers
//! only compute. The queue is bounded as the kernel driver bounds it, and
//! its depth is the "under load" signal that turns cookie replies on.

use std::{
    net::{IpAddr, SocketAddr},
    sync::{
        atomic::{AtomicUsize, Ordering},
        mpsc::{sync_channel, Receiver, SyncSender, TrySendError},
        Arc, Mutex,
    },
    thread::JoinHandle,
};

use rand_core::OsRng;
use tokio::sync::mpsc::UnboundedSender;

use crate::noise::{self, Identity, InitiationOpened, Keypair, NoiseError, Responder};

/// Handshake jobs queued at most (the driver's MAX_QUEUED_INCOMING_HANDSHAKES).
pub(super) const MAX_QUEUED: usize = 4096;
/// Queued jobs from which the daemon is under load (the driver's 1/8).
pub(super) const UNDER_LOAD_QUEUED: usize = MAX_QUEUED / 8;

/// Work for a worker.
pub(super) enum Job {
    /// Decrypt the initiator's static key (one DH with our static key).
    Open {
        msg: Vec<u8>,
        src: SocketAddr,
        /// Our address the message was sent to (answered from it).
        local: Option<IpAddr>,
        identity: Arc<Identity>,
    },
    /// Build the response to a consumed initiation of peer `id`.
    Respond {
        id: u32,
        generation: u64,
        src: SocketAddr,
        local: Option<IpAddr>,
        local_index: u32,
        msg_len: usize,
        responder: Responder,
    },
}

/// A finished job, for the daemon's task.
pub(super) enum Done {
    Opened {
        msg_len: usize,
        src: SocketAddr,
        local: Option<IpAddr>,
        result: Result<InitiationOpened, NoiseError>,
    },
    Responded {
        id: u32,
        generation: u64,
        src: SocketAddr,
        local: Option<IpAddr>,
        local_index: u32,
        msg_len: usize,
        result: Result<([u8; noise::HANDSHAKE_RESPONSE_LEN], Keypair), NoiseError>,
    },
}

/// Worker threads and their bounded queue; the workers exit when the pool
/// is dropped.
pub(super) struct HandshakePool {
    jobs: Option<SyncSender<Job>>,
    queued: Arc<AtomicUsize>,
    workers: Vec<JoinHandle<()>>,
}

impl HandshakePool {
    /// `threads` workers (at least one) sending what they finish to `done`.
    pub(super) fn new(threads: usize, done: UnboundedSender<Done>) -> Self {
        let (tx, rx) = sync_channel::<Job>(MAX_QUEUED);
        let rx = Arc::new(Mutex::new(rx));
        let queued = Arc::new(AtomicUsize::new(0));
        let workers = (0..threads.max(1))
            .filter_map(|n| {
                let (rx, done, queued) = (Arc::clone(&rx), done.clone(), Arc::clone(&queued));
                std::thread::Builder::new()
                    .name(format!("wg-handshake-{n}"))
                    .spawn(move || work(&rx, &done, &queued))
                    .map_err(|e| tracing::warn!(error = %e, "starting a handshake worker failed"))
                    .ok()
            })
            .collect();
        Self {
            jobs: Some(tx),
            queued,
            workers,
        }
    }

    /// Queues `job`; false when the queue is full (the caller drops the
    /// message, as the driver does).
    pub(super) fn submit(&self, job: Job) -> bool {
        let Some(jobs) = &self.jobs else {
            return false;
        };
        self.queued.fetch_add(1, Ordering::SeqCst);
        match jobs.try_send(job) {
            Ok(()) => true,
            Err(TrySendError::Full(_) | TrySendError::Disconnected(_)) => {
                self.queued.fetch_sub(1, Ordering::SeqCst);
                false
            }
        }
    }

    /// Jobs queued or being worked on.
    pub(super) fn queued(&self) -> usize {
        self.queued.load(Ordering::SeqCst)
    }
}

impl Drop for HandshakePool {
    fn drop(&mut self) {
        // Closing the queue ends each worker's loop.
        self.jobs = None;
        for w in self.workers.drain(..) {
            let _ = w.join();
        }
    }
}

fn work(rx: &Mutex<Receiver<Job>>, done: &UnboundedSender<Done>, queued: &AtomicUsize) {
    loop {
        // Hold the lock only to take a job, never while working.
        let job = match rx.lock() {
            Ok(rx) => rx.recv(),
            Err(_) => return,
        };
        let Ok(job) = job else { return };
        let out = match job {
            Job::Open {
                msg,
                src,
                local,
                identity,
            } => Done::Opened {
                msg_len: msg.len(),
                src,
                local,
                result: noise::open_initiation(&identity, &msg),
            },
            Job::Respond {
                id,
                generation,
                src,
                local,
                local_index,
                msg_len,
                responder,
            } => Done::Responded {
                id,
                generation,
                src,
                local,
                local_index,
                msg_len,
                result: responder.respond(&mut OsRng, local_index),
            },
        };
        queued.fetch_sub(1, Ordering::SeqCst);
        if done.send(out).is_err() {
            return;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::keys::PrivateKey;

    /// Every job comes back, from several workers, and the queue depth
    /// returns to zero; a full queue refuses instead of blocking.
    #[tokio::test]
    async fn jobs_come_back_and_the_queue_is_bounded() {
        let ours = PrivateKey::generate();
        let identity = Arc::new(Identity::new(&ours));
        let theirs = Identity::new(&PrivateKey::generate());
        let mut hs = noise::Handshake::new(&theirs, *identity.public_key(), None);
        let (tx, mut rx) = tokio::sync::mpsc::unbounded_channel();
        let pool = HandshakePool::new(2, tx);
        let src: SocketAddr = "192.0.2.1:51820".parse().expect("addr");
        let n = 20;
        for i in 0..n {
            let msg = hs
                .create_initiation(
                    &mut OsRng,
                    noise::Tai64N::from_unix(1_700_000_000 + u64::from(i), 0),
                    i + 1,
                    std::time::Duration::ZERO,
                )
                .expect("initiation");
            assert!(pool.submit(Job::Open {
                msg: msg.to_vec(),
                src,
                local: None,
                identity: Arc::clone(&identity),
            }));
        }
        for _ in 0..n {
            match rx.recv().await.expect("a result") {
                Done::Opened { result, .. } => {
                    assert_eq!(result.expect("opened").peer_public(), theirs.public_key());
                }
                Done::Responded { .. } => panic!("no response was asked for"),
            }
        }
        assert_eq!(pool.queued(), 0);
        drop(pool);

        // No workers: the queue fills and then refuses.
        let (jobs, _held) = sync_channel(2);
        let stalled = HandshakePool {
            jobs: Some(jobs),
            queued: Arc::new(AtomicUsize::new(0)),
            workers: Vec::new(),
        };
        let job = || Job::Open {
            msg: vec![1; 148],
            src,
            local: None,
            identity: Arc::clone(&identity),
        };
        assert!(stalled.submit(job()));
        assert!(stalled.submit(job()));
        assert!(!stalled.submit(job()), "a full queue refuses");
        assert_eq!(stalled.queued(), 2);
    }
}
