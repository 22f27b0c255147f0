//! The stats monitor's side of `/metrics`: a Prometheus collector serving
//! each config's latest reading as it was taken. Families are named by the
//! config's `displayName`s; HELP, type and label keys are upstream's;
//! label pairs are sorted by name, as Prometheus's Go client writes them.

use std::sync::{Arc, Mutex, PoisonError};

use prometheus::core::{Collector, Desc};
use prometheus::proto::{self, MetricFamily, MetricType};

use super::catalog::Kind;
use super::collect::Sample;
use crate::config::stats::SystemStatsConfig;

/// One config's latest reading, as metric families.
#[derive(Debug)]
pub struct Latest {
    descs: Vec<Desc>,
    families: Mutex<Vec<MetricFamily>>,
}

impl Latest {
    /// The families `cfg` exports, empty until the first reading.
    pub fn new(cfg: &SystemStatsConfig) -> Result<Arc<Self>, prometheus::Error> {
        let descs = cfg
            .metrics
            .iter()
            .map(|m| {
                let def = m.def();
                Desc::new(
                    m.name.clone(),
                    def.help.to_owned(),
                    def.labels.iter().map(|l| (*l).to_owned()).collect(),
                    Default::default(),
                )
            })
            .collect::<Result<_, _>>()?;
        Ok(Arc::new(Self {
            descs,
            families: Mutex::new(Vec::new()),
        }))
    }

    /// Replaces the reading with `samples` (series not in it are gone).
    pub fn set(&self, cfg: &SystemStatsConfig, samples: &[Sample]) {
        let families = cfg
            .metrics
            .iter()
            .map(|m| {
                let def = m.def();
                let mut f = MetricFamily::default();
                f.set_name(m.name.clone());
                f.set_help(def.help.to_owned());
                f.set_field_type(match def.kind {
                    Kind::Gauge => MetricType::GAUGE,
                    Kind::Counter => MetricType::COUNTER,
                });
                let metrics = samples
                    .iter()
                    .filter(|s| s.id == def.id)
                    .map(|s| metric(def.kind, s))
                    .collect();
                f.set_metric(metrics);
                f
            })
            .collect();
        *self.families.lock().unwrap_or_else(PoisonError::into_inner) = families;
    }

    /// Takes every series off `/metrics`.
    pub fn clear(&self) {
        self.families
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .clear();
    }

    /// A guard that clears the reading when dropped.
    pub fn clear_on_drop(&self) -> ClearOnDrop<'_> {
        ClearOnDrop(self)
    }

    /// The collector to register.
    pub fn collector(self: &Arc<Self>) -> Box<dyn Collector> {
        Box::new(Served(Arc::clone(self)))
    }
}

#[derive(Debug)]
pub struct ClearOnDrop<'a>(&'a Latest);

impl Drop for ClearOnDrop<'_> {
    fn drop(&mut self) {
        self.0.clear();
    }
}

fn metric(kind: Kind, s: &Sample) -> proto::Metric {
    let mut labels: Vec<proto::LabelPair> = s
        .labels
        .iter()
        .map(|(k, v)| {
            let mut p = proto::LabelPair::default();
            p.set_name((*k).to_owned());
            p.set_value(v.clone());
            p
        })
        .collect();
    labels.sort_by(|a, b| a.name().cmp(b.name()));
    let mut m = proto::Metric::from_label(labels);
    match kind {
        Kind::Gauge => {
            let mut g = proto::Gauge::default();
            g.set_value(s.value);
            m.set_gauge(g);
        }
        Kind::Counter => {
            let mut c = proto::Counter::default();
            c.set_value(s.value);
            m.set_counter(c);
        }
    }
    m
}

struct Served(Arc<Latest>);

impl Collector for Served {
    fn desc(&self) -> Vec<&Desc> {
        self.0.descs.iter().collect()
    }

    fn collect(&self) -> Vec<MetricFamily> {
        self.0
            .families
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .clone()
    }
}
