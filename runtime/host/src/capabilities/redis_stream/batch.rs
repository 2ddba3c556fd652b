//! `xadd-batch` (contract 0.2.0): many entries in one pipelined round trip to Redis.
//!
//! Everything is measured in the guest's memory before anything is copied: the number of
//! entries (`limits.xadd_batch_entries`) first, then each entry against the caps of one
//! `xadd` (an entry over one is refused on its own, with `rejected`), then the bytes of all
//! the entries together (`limits.xadd_batch_bytes`). Over either whole-call cap the call is
//! refused as a value and nothing is written. Each entry counts as one host call, so a batch
//! spends the budget that as many `xadd` calls would.

use wasmtime::StoreContextMut;
use wasmtime::component::{ComponentType, Lift, LinkerInstance, WasmList, WasmStr};

use super::{Entry, Error, RedisStreamState, bounded, check_entry, copy_entry, log_denied, measure_entry};
use crate::capabilities::CapabilityView;
use crate::state::PublisherState;
use broadcaster_core::units::ByteSize;

/// The WIT `xadd-entry`, lifted without copying: what the guest passed, still in its memory.
#[derive(ComponentType, Lift)]
#[component(record)]
struct RawEntry {
    #[component(name = "stream")]
    stream: WasmStr,
    fields: WasmList<(WasmStr, WasmStr)>,
    #[component(name = "max-len")]
    max_len: Option<u64>,
}

/// What `xadd-batch` returns: the whole call refused, or one result per entry.
type BatchResult = Result<Vec<Result<String, Error>>, Error>;

/// Adds `xadd-batch` to a `redis-stream` instance of the linker.
pub(super) fn add_xadd_batch(instance: &mut LinkerInstance<'_, PublisherState>) -> wasmtime::Result<()> {
    instance.func_wrap_async(
        "xadd-batch",
        |mut store: StoreContextMut<'_, PublisherState>, (entries,): (WasmList<RawEntry>,)| {
            Box::new(async move {
                let entries = match read_entries(&mut store, &entries)? {
                    Ok(entries) => entries,
                    Err(refused) => return Ok((Err(refused),)),
                };
                let view = store.data_mut().view::<RedisStreamState>();
                Ok((view.xadd_batch(entries).await,))
            })
        },
    )
}

/// One entry to append, or why it is refused already.
type Prepared = Result<(Entry, Option<u64>), Error>;

/// Measures every entry, then copies the ones within the caps. `Ok(Err(..))`: the whole call
/// is refused (no grant, too many entries or bytes); `Err`: the call's budget is spent (a
/// trap).
fn read_entries(
    store: &mut StoreContextMut<'_, PublisherState>,
    entries: &WasmList<RawEntry>,
) -> wasmtime::Result<Result<Vec<Prepared>, Error>> {
    let limits = store.data().call.budget.limits().clone();
    // A refused call still counts as one host call.
    let refuse = |store: &StoreContextMut<'_, PublisherState>, error: Error| {
        store.data().call.budget.charge_host_call(0)?;
        Ok(Err(error))
    };
    if !store.data_mut().view::<RedisStreamState>().state.is_granted() {
        return refuse(store, Error::NotGranted);
    }
    if entries.len() as u64 > limits.xadd_batch_entries {
        let message = format!(
            "the batch has {} entries, more than limits.xadd_batch_entries ({}); nothing was written",
            entries.len(),
            limits.xadd_batch_entries
        );
        return refuse(store, Error::Rejected(message));
    }
    let mut measured = Vec::with_capacity(entries.len());
    let mut total: u64 = 0;
    for i in 0..entries.len() {
        let raw = entries.get(&mut *store, i).expect("index within the list")?;
        let entry = measure_entry(store, &raw.stream, &raw.fields)?;
        if let Ok(entry) = &entry {
            total = total.saturating_add(entry.bytes);
        }
        measured.push((raw, entry));
    }
    if total > limits.xadd_batch_bytes {
        let message = format!(
            "the batch is {total} bytes (stream names and fields), more than limits.xadd_batch_bytes ({}); \
             nothing was written",
            ByteSize(limits.xadd_batch_bytes)
        );
        return refuse(store, Error::Rejected(message));
    }
    let calls = (entries.len() as u64).max(1);
    store.data().call.budget.charge_host_calls(calls, usize::try_from(total).unwrap_or(usize::MAX))?;
    let mut prepared = Vec::with_capacity(measured.len());
    for (raw, entry) in &measured {
        prepared.push(match entry {
            Ok(entry) => Ok((copy_entry(store, &raw.stream, entry)?, raw.max_len)),
            Err(message) => Err(Error::Rejected(message.clone())),
        });
    }
    Ok(Ok(prepared))
}

impl CapabilityView<'_, RedisStreamState> {
    /// Checks each entry against the grant, then appends the ones that pass in one pipeline.
    async fn xadd_batch(self, entries: Vec<Prepared>) -> BatchResult {
        let (grant, client) = self.state.connection()?;
        let mut results: Vec<Result<String, Error>> = Vec::with_capacity(entries.len());
        let mut sent = Vec::with_capacity(entries.len());
        let mut denied: Option<Error> = None;
        let mut denied_count = 0;
        for (i, prepared) in entries.iter().enumerate() {
            let checked = prepared.as_ref().map_err(Clone::clone).and_then(|(entry, max_len)| {
                check_entry(grant, entry).map(|()| (entry.stream.as_str(), entry.fields.as_slice(), *max_len))
            });
            match checked {
                Ok(entry) => {
                    sent.push((i, entry));
                    results.push(Ok(String::new()));
                }
                Err(error) => {
                    if matches!(error, Error::StreamDenied(_)) {
                        denied_count += 1;
                        denied.get_or_insert_with(|| error.clone());
                    }
                    results.push(Err(error));
                }
            }
        }
        if let Some(first) = &denied {
            log_denied(grant, &self.call.publisher, first, denied_count);
        }
        if sent.is_empty() {
            return Ok(results);
        }
        let pipeline: Vec<_> = sent.iter().map(|(_, entry)| *entry).collect();
        let replies = bounded(self.call.host_call_timeout(), async {
            Ok::<_, broadcaster_redis::client::StreamCallError>(client.xadd_entries(&pipeline).await)
        })
        .await;
        match replies {
            Ok(replies) => {
                for ((slot, _), reply) in sent.iter().zip(replies) {
                    results[*slot] = reply.map_err(super::guest_error);
                }
            }
            Err(unavailable) => {
                for (slot, _) in &sent {
                    results[*slot] = Err(unavailable.clone());
                }
            }
        }
        Ok(results)
    }
}
