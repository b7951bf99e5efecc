//! Sends simulated events to Azure Event Hubs with the official `azure_messaging_eventhubs` crate
//! (AMQP), signed in with Entra ID: the managed identity in Azure, the developer's `az`/`azd` sign-in
//! locally. Events are routed to a partition by a stable hash of their partition key (the patient
//! id), so one patient's events stay in order, and sent in size-bounded batches per partition.
//!
//! Connection strings (SAS keys) are refused with a pointer to the alternatives: the official Rust
//! crate signs only with Entra ID tokens, and the Event Hubs emulator accepts only SAS.
//!
//! The sender needs the `eventhubs-sender` feature (on by default). The deployed handler is built
//! without it: the crate's AMQP stack links OpenSSL, which the handler must not carry.

#[cfg(feature = "eventhubs-sender")]
use std::sync::Arc;
#[cfg(feature = "eventhubs-sender")]
use std::time::{Duration, Instant};

#[cfg(feature = "eventhubs-sender")]
use azure_core::credentials::TokenCredential;
#[cfg(feature = "eventhubs-sender")]
use azure_messaging_eventhubs::{EventDataBatchOptions, ProducerClient};

/// Where to send.
#[derive(Debug, Clone)]
pub struct EventHubsTarget {
    /// `<namespace>.servicebus.windows.net`.
    pub namespace: String,
    /// Event hub name.
    pub event_hub: String,
    /// Client id of a user-assigned managed identity.
    pub client_id: Option<String>,
}

impl EventHubsTarget {
    /// Reads the target from the Functions-style settings: `EH__fullyQualifiedNamespace` (or an
    /// `EH` value that is a namespace) and `EH_NAME`.
    pub fn from_settings(
        namespace: Option<&str>,
        connection: Option<&str>,
        hub: &str,
        client_id: Option<String>,
    ) -> Result<Self, String> {
        if let Some(conn) = connection
            && conn.contains("SharedAccessKey")
        {
            return Err(
                "EH is a SAS connection string; the official Rust Event Hubs client signs in with Entra ID only. \
                 Set EH__fullyQualifiedNamespace=<ns>.servicebus.windows.net and sign in (`az login` locally, a managed identity in Azure) \
                 with the Azure Event Hubs Data Sender role, or send through the Kafka endpoint (README)"
                    .into(),
            );
        }
        let namespace = namespace
            .or(connection)
            .map(|n| n.trim().trim_start_matches("sb://").trim_end_matches('/').to_string())
            .ok_or("set EH__fullyQualifiedNamespace (e.g. myns.servicebus.windows.net) to send to Event Hubs")?;
        if !namespace.contains('.') || namespace.contains('/') || namespace.contains(';') {
            return Err(format!("{namespace:?} is not an Event Hubs namespace; expected <ns>.servicebus.windows.net"));
        }
        Ok(Self { namespace, event_hub: hub.to_string(), client_id })
    }
}

/// What a send did.
#[derive(Debug, Clone, Default, serde::Serialize)]
pub struct SendReport {
    /// Events sent.
    pub events: u64,
    /// Batches sent.
    pub batches: u64,
    /// Partitions of the hub.
    pub partitions: usize,
}

#[cfg(feature = "eventhubs-sender")]
fn credential(client_id: Option<String>) -> azure_core::Result<Arc<dyn TokenCredential>> {
    // In Azure (App Service, Functions, VMs) the platform sets IDENTITY_ENDPOINT; elsewhere use the
    // developer's CLI sign-in.
    if std::env::var_os("IDENTITY_ENDPOINT").is_some() || std::env::var_os("MSI_ENDPOINT").is_some() {
        let options = azure_identity::ManagedIdentityCredentialOptions {
            user_assigned_id: client_id.map(azure_identity::UserAssignedId::ClientId),
            ..Default::default()
        };
        Ok(azure_identity::ManagedIdentityCredential::new(Some(options))?)
    } else {
        Ok(azure_identity::DeveloperToolsCredential::new(None)?)
    }
}

/// The partition for a key: a stable hash, so a patient's events always land in one partition.
pub fn partition_for(key: &str, partitions: usize) -> usize {
    (xxhash_rust::xxh3::xxh3_64(key.as_bytes()) % partitions.max(1) as u64) as usize
}

/// Without the `eventhubs-sender` feature there is no sender: says so, and how to get one.
#[cfg(not(feature = "eventhubs-sender"))]
pub async fn send(
    _target: &EventHubsTarget,
    _events: impl Iterator<Item = (String, Vec<u8>)>,
    _rate: Option<f64>,
) -> Result<SendReport, String> {
    Err("this build has no Event Hubs sender (it was built without the `eventhubs-sender` feature, as the deployed \
         handler is); use a default build (`cargo build --release`) to run `simulate --to eventhubs`"
        .into())
}

/// Sends `(partition key, body)` pairs, at most `rate` events per second when given.
#[cfg(feature = "eventhubs-sender")]
pub async fn send(
    target: &EventHubsTarget,
    events: impl Iterator<Item = (String, Vec<u8>)>,
    rate: Option<f64>,
) -> Result<SendReport, String> {
    let fail = |what: &str, e: &dyn std::fmt::Display| format!("{what}: {e}");
    let credential = credential(target.client_id.clone()).map_err(|e| fail("cannot sign in", &e))?;
    let producer = ProducerClient::builder()
        .with_application_id("patientflow".to_string())
        .open(&target.namespace, &target.event_hub, credential)
        .await
        .map_err(|e| fail(&format!("cannot open {}/{}", target.namespace, target.event_hub), &e))?;
    let properties =
        producer.get_eventhub_properties().await.map_err(|e| fail("cannot read the hub's partitions", &e))?;
    let partitions = properties.partition_ids;
    if partitions.is_empty() {
        return Err("the event hub reports no partitions".into());
    }
    let mut report = SendReport { partitions: partitions.len(), ..Default::default() };
    // Per-partition pending events; a batch is filled until the service's size limit.
    let mut pending: Vec<Vec<Vec<u8>>> = vec![Vec::new(); partitions.len()];
    let started = Instant::now();
    let flush = |p: usize, bodies: Vec<Vec<u8>>| {
        let producer = &producer;
        let id = partitions[p].clone();
        async move {
            let mut sent = 0u64;
            let mut queue = bodies.into_iter().peekable();
            while queue.peek().is_some() {
                let options = EventDataBatchOptions { partition_id: Some(id.clone()), ..Default::default() };
                let batch =
                    producer.create_batch(Some(options)).await.map_err(|e| format!("cannot create a batch: {e}"))?;
                let mut in_batch = 0;
                while let Some(body) = queue.peek() {
                    if !batch.try_add_event_data(body.clone(), None).map_err(|e| format!("cannot add an event: {e}"))? {
                        break;
                    }
                    queue.next();
                    in_batch += 1;
                }
                if in_batch == 0 {
                    return Err("an event is larger than the hub's maximum message size (1 MB)".to_string());
                }
                producer.send_batch(batch, None).await.map_err(|e| format!("send failed: {e}"))?;
                sent += 1;
            }
            Ok::<u64, String>(sent)
        }
    };
    for (i, (key, body)) in events.enumerate() {
        let p = partition_for(&key, partitions.len());
        pending[p].push(body);
        report.events += 1;
        if pending[p].len() >= 500 {
            report.batches += flush(p, std::mem::take(&mut pending[p])).await?;
        }
        if let Some(rate) = rate {
            let due = Duration::from_secs_f64((i + 1) as f64 / rate);
            if let Some(wait) = due.checked_sub(started.elapsed()) {
                for (p, bodies) in pending.iter_mut().enumerate() {
                    if !bodies.is_empty() {
                        report.batches += flush(p, std::mem::take(bodies)).await?;
                    }
                }
                tokio::time::sleep(wait).await;
            }
        }
    }
    for (p, bodies) in pending.iter_mut().enumerate() {
        if !bodies.is_empty() {
            report.batches += flush(p, std::mem::take(bodies)).await?;
        }
    }
    let _ = producer.close().await;
    Ok(report)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn settings_name_the_fix() {
        let sas = "Endpoint=sb://localhost;SharedAccessKeyName=RootManageSharedAccessKey;SharedAccessKey=SAS_KEY_VALUE;UseDevelopmentEmulator=true;";
        let e = EventHubsTarget::from_settings(None, Some(sas), "hub", None).unwrap_err();
        assert!(e.contains("Entra ID") && e.contains("EH__fullyQualifiedNamespace"), "{e}");
        assert!(!e.contains("SAS_KEY_VALUE"), "never echo the key");
        let t = EventHubsTarget::from_settings(Some("myns.servicebus.windows.net"), None, "hub", None).unwrap();
        assert_eq!(t.namespace, "myns.servicebus.windows.net");
        assert!(
            EventHubsTarget::from_settings(None, None, "hub", None)
                .unwrap_err()
                .contains("EH__fullyQualifiedNamespace")
        );
        assert!(EventHubsTarget::from_settings(Some("not a namespace"), None, "hub", None).is_err());
    }

    #[test]
    fn a_key_always_maps_to_one_partition() {
        let p = partition_for("patient-1", 4);
        assert!((0..100).all(|_| partition_for("patient-1", 4) == p));
        let spread: std::collections::HashSet<usize> = (0..100).map(|i| partition_for(&format!("p{i}"), 4)).collect();
        assert_eq!(spread.len(), 4);
    }
}
