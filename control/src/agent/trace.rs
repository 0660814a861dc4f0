//! `vxmesh trace`: the frames this node's switch sees on one network, for a
//! while, as a pcap file (so operators can debug an overlay with tcpdump or
//! Wireshark without entering namespaces). One trace at a time per node: a new
//! one replaces the one running.

use super::{Agent, AgentError};
use crate::state::StateError;
use pcap_file::pcap::{PcapPacket, PcapWriter};
use std::sync::mpsc::{self, RecvTimeoutError};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};
use vxmesh_dataplane::switch::tap::{Tap, TapFilter};

/// Frames one trace keeps at most.
pub const MAX_FRAMES: usize = 100_000;
/// The longest trace, in seconds.
pub const MAX_SECS: f64 = 3600.0;
/// Copies in flight between the workers and the trace; past this the workers
/// count the copies they could not hand over (`trace_lost`).
const QUEUE: usize = 8192;

impl Agent {
    /// Traces network `network` for `secs` seconds or `count` frames, whichever
    /// comes first; returns the pcap file and how many frames it holds.
    pub async fn trace(
        &self,
        network: &str,
        filter: &str,
        secs: f64,
        count: usize,
    ) -> Result<(Vec<u8>, usize), AgentError> {
        let vni = self
            .last_state
            .lock()
            .map_err(|_| AgentError::Join("state lock poisoned".into()))?
            .networks
            .get(network)
            .map(|n| n.vni)
            .ok_or_else(|| StateError::NotFound(format!("network {network:?}")))?;
        let filter: TapFilter = filter.parse().map_err(StateError::Invalid)?;
        if !(secs > 0.0 && secs <= MAX_SECS) {
            return Err(StateError::Invalid(format!(
                "a trace lasts more than 0 and at most {MAX_SECS} seconds, not {secs}"
            ))
            .into());
        }
        if count == 0 || count > MAX_FRAMES {
            return Err(StateError::Invalid(format!(
                "a trace keeps 1 to {MAX_FRAMES} frames, not {count}"
            ))
            .into());
        }
        let (tx, rx) = mpsc::sync_channel(QUEUE);
        self.worker.trace(Some(Tap::new(vni, filter, tx)));
        let until = Instant::now() + Duration::from_secs_f64(secs);
        let frames = tokio::task::spawn_blocking(move || collect(&rx, until, count)).await;
        self.worker.trace(None);
        let frames = frames.map_err(|e| AgentError::Join(e.to_string()))?;
        let n = frames.len();
        Ok((
            pcap(&frames).map_err(|e| AgentError::Join(e.to_string()))?,
            n,
        ))
    }
}

/// Frames as they arrive, stamped on arrival (the workers keep no wall clock).
fn collect(rx: &mpsc::Receiver<Vec<u8>>, until: Instant, count: usize) -> Vec<(Duration, Vec<u8>)> {
    let mut out = Vec::new();
    while out.len() < count {
        let left = until.saturating_duration_since(Instant::now());
        if left.is_zero() {
            break;
        }
        match rx.recv_timeout(left) {
            Ok(f) => {
                let at = SystemTime::now()
                    .duration_since(UNIX_EPOCH)
                    .unwrap_or_default();
                out.push((at, f));
            }
            // replaced by a newer trace, or the agent is stopping
            Err(RecvTimeoutError::Timeout | RecvTimeoutError::Disconnected) => break,
        }
    }
    out
}

/// A pcap file (Ethernet, microseconds) of `frames`.
fn pcap(frames: &[(Duration, Vec<u8>)]) -> Result<Vec<u8>, pcap_file::PcapError> {
    let mut w = PcapWriter::new(Vec::new())?;
    for (at, f) in frames {
        w.write_packet(&PcapPacket::new(*at, f.len() as u32, f))?;
    }
    Ok(w.into_writer())
}

#[cfg(test)]
mod tests {
    use super::*;
    use pcap_file::pcap::PcapReader;

    #[test]
    fn frames_come_back_from_the_pcap_file_as_they_went_in() {
        let frames = vec![
            (Duration::from_micros(1_700_000_000_000_001), vec![1u8; 60]),
            (
                Duration::from_micros(1_700_000_000_000_002),
                vec![2u8; 1514],
            ),
        ];
        let file = pcap(&frames).unwrap();
        let mut r = PcapReader::new(&file[..]).unwrap();
        assert_eq!(
            r.header().datalink,
            pcap_file::DataLink::ETHERNET,
            "Ethernet frames"
        );
        for (at, f) in &frames {
            let p = r.next_packet().unwrap().unwrap();
            assert_eq!((p.timestamp, &p.data[..]), (*at, &f[..]));
        }
        assert!(r.next_packet().is_none());
    }

    #[test]
    fn a_trace_stops_at_its_count_or_its_deadline() {
        let (tx, rx) = mpsc::sync_channel(8);
        for i in 0..5u8 {
            tx.send(vec![i]).unwrap();
        }
        let far = Instant::now() + Duration::from_secs(60);
        assert_eq!(collect(&rx, far, 3).len(), 3);
        let soon = Instant::now() + Duration::from_millis(50);
        assert_eq!(collect(&rx, soon, 100).len(), 2, "then nothing more came");
    }
}
