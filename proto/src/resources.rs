//! Resources and attributes of an agent, an offer or a task.
//!
//! Quantities are integers in fixed units so that arithmetic is exact:
//! `cpus` in millicpus, `mem` and `disk` in MiB, `gpus` whole, named scalars
//! in thousandths. Every operation that could go negative or overflow is
//! checked and returns `None` instead; a `Resources` value is never negative.

use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;
use std::fmt;

/// Longest resource or attribute name accepted.
const MAX_NAME_LEN: usize = 64;
/// Most port ranges or named scalars one value may hold; bounds decode cost.
const MAX_ENTRIES: usize = 1024;

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ParseError {
    #[error("expected NAME:VALUE, found {0:?}")]
    NotAPair(String),
    #[error("{name}: {value:?} is not a non-negative number with at most 3 decimals")]
    BadNumber { name: String, value: String },
    #[error("{0:?} is not a valid name: use 1-64 of a-z, A-Z, 0-9, '-', '_', '.', '/'")]
    BadName(String),
    #[error("ports: {0:?} is not a list of ranges like [31000-32000,40000-40010]")]
    BadPorts(String),
    #[error("port range {0}-{1} is inverted")]
    InvertedRange(u16, u16),
    #[error("{0} given twice")]
    Duplicate(String),
    #[error("too many entries (at most {MAX_ENTRIES})")]
    TooMany,
    #[error("value too large")]
    Overflow,
}

fn check_name(name: &str) -> Result<(), ParseError> {
    let ok = !name.is_empty()
        && name.len() <= MAX_NAME_LEN
        && name
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.' | '/'));
    if ok {
        Ok(())
    } else {
        Err(ParseError::BadName(name.to_string()))
    }
}

/// An inclusive range of ports, `begin <= end` always.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(try_from = "(u16, u16)", into = "(u16, u16)")]
pub struct PortRange {
    begin: u16,
    end: u16,
}

impl PortRange {
    pub fn new(begin: u16, end: u16) -> Result<Self, ParseError> {
        if begin > end {
            return Err(ParseError::InvertedRange(begin, end));
        }
        Ok(PortRange { begin, end })
    }
    pub fn begin(self) -> u16 {
        self.begin
    }
    pub fn end(self) -> u16 {
        self.end
    }
    fn len(self) -> u64 {
        u64::from(self.end - self.begin) + 1
    }
}

impl TryFrom<(u16, u16)> for PortRange {
    type Error = ParseError;
    fn try_from((b, e): (u16, u16)) -> Result<Self, ParseError> {
        PortRange::new(b, e)
    }
}
impl From<PortRange> for (u16, u16) {
    fn from(r: PortRange) -> Self {
        (r.begin, r.end)
    }
}

/// A set of ports kept as sorted, disjoint, non-adjacent ranges, so that two
/// equal sets always compare equal.
#[derive(Debug, Clone, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(try_from = "Vec<PortRange>", into = "Vec<PortRange>")]
pub struct Ports(Vec<PortRange>);

impl Ports {
    pub fn ranges(&self) -> &[PortRange] {
        &self.0
    }

    pub fn count(&self) -> u64 {
        self.0.iter().map(|r| r.len()).sum()
    }

    fn normalized(mut ranges: Vec<PortRange>) -> Ports {
        ranges.sort();
        let mut out: Vec<PortRange> = Vec::with_capacity(ranges.len());
        for r in ranges {
            match out.last_mut() {
                Some(last) if u32::from(r.begin) <= u32::from(last.end) + 1 => {
                    last.end = last.end.max(r.end)
                }
                _ => out.push(r),
            }
        }
        Ports(out)
    }

    fn contains(&self, other: &Ports) -> bool {
        other
            .0
            .iter()
            .all(|o| self.0.iter().any(|r| r.begin <= o.begin && o.end <= r.end))
    }

    fn overlaps(&self, other: &Ports) -> bool {
        self.0
            .iter()
            .any(|a| other.0.iter().any(|b| a.begin <= b.end && b.begin <= a.end))
    }

    /// Removes `other`, which must be contained in `self`.
    fn minus(&self, other: &Ports) -> Ports {
        let mut out = Vec::new();
        for r in &self.0 {
            let mut pieces = vec![*r];
            for o in &other.0 {
                pieces = pieces
                    .into_iter()
                    .flat_map(|p| {
                        let mut left = Vec::with_capacity(2);
                        if o.end < p.begin || o.begin > p.end {
                            left.push(p);
                        } else {
                            if o.begin > p.begin {
                                left.push(PortRange {
                                    begin: p.begin,
                                    end: o.begin - 1,
                                });
                            }
                            if o.end < p.end {
                                left.push(PortRange {
                                    begin: o.end + 1,
                                    end: p.end,
                                });
                            }
                        }
                        left
                    })
                    .collect();
            }
            out.extend(pieces);
        }
        Ports::normalized(out)
    }
}

impl TryFrom<Vec<PortRange>> for Ports {
    type Error = ParseError;
    fn try_from(v: Vec<PortRange>) -> Result<Self, ParseError> {
        if v.len() > MAX_ENTRIES {
            return Err(ParseError::TooMany);
        }
        Ok(Ports::normalized(v))
    }
}
impl From<Ports> for Vec<PortRange> {
    fn from(p: Ports) -> Self {
        p.0
    }
}

/// A bundle of resources. Never negative: subtraction is only possible
/// through [`Resources::checked_sub`], which refuses to go below zero.
#[derive(Debug, Clone, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(try_from = "WireResources", into = "WireResources")]
pub struct Resources {
    cpus: u64,
    mem: u64,
    disk: u64,
    gpus: u64,
    ports: Ports,
    /// Named scalars in thousandths; zero entries are never stored, so equal
    /// bundles compare equal.
    scalars: BTreeMap<String, u64>,
}

#[derive(Serialize, Deserialize)]
struct WireResources {
    cpus: u64,
    mem: u64,
    disk: u64,
    gpus: u64,
    ports: Ports,
    scalars: Vec<(String, u64)>,
}

impl TryFrom<WireResources> for Resources {
    type Error = ParseError;
    fn try_from(w: WireResources) -> Result<Self, ParseError> {
        if w.scalars.len() > MAX_ENTRIES {
            return Err(ParseError::TooMany);
        }
        let mut scalars = BTreeMap::new();
        for (name, v) in w.scalars {
            check_name(&name)?;
            if v != 0 && scalars.insert(name.clone(), v).is_some() {
                return Err(ParseError::Duplicate(name));
            }
        }
        Ok(Resources {
            cpus: w.cpus,
            mem: w.mem,
            disk: w.disk,
            gpus: w.gpus,
            ports: w.ports,
            scalars,
        })
    }
}

impl From<Resources> for WireResources {
    fn from(r: Resources) -> Self {
        WireResources {
            cpus: r.cpus,
            mem: r.mem,
            disk: r.disk,
            gpus: r.gpus,
            ports: r.ports,
            scalars: r.scalars.into_iter().collect(),
        }
    }
}

impl Resources {
    pub fn new() -> Self {
        Self::default()
    }
    /// Sets cpus, in thousandths of a cpu.
    pub fn with_millicpus(mut self, m: u64) -> Self {
        self.cpus = m;
        self
    }
    pub fn with_mem_mib(mut self, mib: u64) -> Self {
        self.mem = mib;
        self
    }
    pub fn with_disk_mib(mut self, mib: u64) -> Self {
        self.disk = mib;
        self
    }
    pub fn with_gpus(mut self, n: u64) -> Self {
        self.gpus = n;
        self
    }
    pub fn with_ports(mut self, ranges: Vec<PortRange>) -> Self {
        self.ports = Ports::normalized(ranges);
        self
    }
    /// Sets a named scalar, in thousandths.
    pub fn with_scalar(mut self, name: &str, milli: u64) -> Result<Self, ParseError> {
        check_name(name)?;
        if milli == 0 {
            self.scalars.remove(name);
        } else {
            self.scalars.insert(name.to_string(), milli);
        }
        Ok(self)
    }

    pub fn millicpus(&self) -> u64 {
        self.cpus
    }
    pub fn mem_mib(&self) -> u64 {
        self.mem
    }
    pub fn disk_mib(&self) -> u64 {
        self.disk
    }
    pub fn gpus(&self) -> u64 {
        self.gpus
    }
    pub fn ports(&self) -> &Ports {
        &self.ports
    }

    /// Every quantity by kind name, ports counted one each; the view fairness
    /// works on (a dominant share is taken over these).
    pub fn quantities(&self) -> impl Iterator<Item = (&str, u64)> {
        [
            ("cpus", self.cpus),
            ("mem", self.mem),
            ("disk", self.disk),
            ("gpus", self.gpus),
            ("ports", self.ports.count()),
        ]
        .into_iter()
        .chain(self.scalars.iter().map(|(k, v)| (k.as_str(), *v)))
        .filter(|(_, v)| *v > 0)
    }

    /// Every quantity but ports as a plain number in its user-facing unit:
    /// cpus and named scalars in whole units (fractions allowed), mem and
    /// disk in MiB, gpus as a count. What schedulers written against the
    /// WIT interface see.
    pub fn to_amounts(&self) -> Vec<(String, f64)> {
        self.quantities()
            .filter(|(name, _)| *name != "ports")
            .map(|(name, v)| {
                let amount = match name {
                    "mem" | "disk" | "gpus" => v as f64,
                    _ => v as f64 / 1000.0,
                };
                (name.to_string(), amount)
            })
            .collect()
    }

    /// The inverse of [`Resources::to_amounts`]; refuses negative, huge and
    /// non-finite amounts and bad names.
    pub fn from_amounts<'a>(
        amounts: impl IntoIterator<Item = (&'a str, f64)>,
    ) -> Result<Resources, ParseError> {
        let mut r = Resources::new();
        for (name, value) in amounts {
            if !value.is_finite() || !(0.0..=1e12).contains(&value) {
                return Err(ParseError::BadNumber {
                    name: name.to_string(),
                    value: value.to_string(),
                });
            }
            let (milli, whole) = ((value * 1000.0).round() as u64, value.round() as u64);
            r = match name {
                "cpus" => r.with_millicpus(milli),
                "mem" => r.with_mem_mib(whole),
                "disk" => r.with_disk_mib(whole),
                "gpus" => r.with_gpus(whole),
                name => r.with_scalar(name, milli)?,
            };
        }
        Ok(r)
    }

    /// A copy with each quantity except ports cut down to `cap(kind)` where
    /// that gives a limit; ports are kept only if `cap("ports")` is `None`.
    pub fn capped(&self, cap: impl Fn(&str) -> Option<u64>) -> Resources {
        let c = |kind: &str, v: u64| cap(kind).map_or(v, |m| v.min(m));
        Resources {
            cpus: c("cpus", self.cpus),
            mem: c("mem", self.mem),
            disk: c("disk", self.disk),
            gpus: c("gpus", self.gpus),
            ports: if cap("ports").is_some() {
                Ports::default()
            } else {
                self.ports.clone()
            },
            scalars: self
                .scalars
                .iter()
                .map(|(k, v)| (k.clone(), c(k, *v)))
                .filter(|(_, v)| *v > 0)
                .collect(),
        }
    }

    pub fn is_empty(&self) -> bool {
        self.quantities().next().is_none()
    }

    /// True when every quantity of `other` fits in `self`.
    pub fn contains(&self, other: &Resources) -> bool {
        self.cpus >= other.cpus
            && self.mem >= other.mem
            && self.disk >= other.disk
            && self.gpus >= other.gpus
            && self.ports.contains(&other.ports)
            && other
                .scalars
                .iter()
                .all(|(k, v)| self.scalars.get(k).is_some_and(|mine| mine >= v))
    }

    /// The sum, or `None` on overflow or if both hold a common port (a port
    /// cannot be counted twice).
    pub fn checked_add(&self, other: &Resources) -> Option<Resources> {
        if self.ports.overlaps(&other.ports) {
            return None;
        }
        let mut scalars = self.scalars.clone();
        for (k, v) in &other.scalars {
            let e = scalars.entry(k.clone()).or_insert(0);
            *e = e.checked_add(*v)?;
        }
        let mut ranges = self.ports.0.clone();
        ranges.extend_from_slice(&other.ports.0);
        Some(Resources {
            cpus: self.cpus.checked_add(other.cpus)?,
            mem: self.mem.checked_add(other.mem)?,
            disk: self.disk.checked_add(other.disk)?,
            gpus: self.gpus.checked_add(other.gpus)?,
            ports: Ports::normalized(ranges),
            scalars,
        })
    }

    /// The difference, or `None` unless `self` contains `other`.
    pub fn checked_sub(&self, other: &Resources) -> Option<Resources> {
        if !self.contains(other) {
            return None;
        }
        let mut scalars = self.scalars.clone();
        for (k, v) in &other.scalars {
            if let Some(mine) = scalars.get_mut(k) {
                *mine -= v;
                if *mine == 0 {
                    scalars.remove(k);
                }
            }
        }
        Some(Resources {
            cpus: self.cpus - other.cpus,
            mem: self.mem - other.mem,
            disk: self.disk - other.disk,
            gpus: self.gpus - other.gpus,
            ports: self.ports.minus(&other.ports),
            scalars,
        })
    }
}

/// Parses `NAME:VALUE;…` as Mesos does: `cpus:2;mem:1024;disk:4096;gpus:1;`
/// `ports:[31000-32000];fpga:0.5`. Decimal values take up to three places.
impl std::str::FromStr for Resources {
    type Err = ParseError;
    fn from_str(s: &str) -> Result<Self, ParseError> {
        let mut r = Resources::new();
        let mut seen = std::collections::BTreeSet::new();
        for part in s.split(';').map(str::trim).filter(|p| !p.is_empty()) {
            let (name, value) = part
                .split_once(':')
                .ok_or_else(|| ParseError::NotAPair(part.to_string()))?;
            let (name, value) = (name.trim(), value.trim());
            if !seen.insert(name.to_string()) {
                return Err(ParseError::Duplicate(name.to_string()));
            }
            let milli = || parse_milli(name, value);
            let whole = || milli().and_then(|m| whole_units(name, value, m));
            match name {
                "cpus" => r.cpus = milli()?,
                "mem" => r.mem = whole()?,
                "disk" => r.disk = whole()?,
                "gpus" => r.gpus = whole()?,
                "ports" => r.ports = parse_ports(value)?,
                _ => r = r.with_scalar(name, milli()?)?,
            }
        }
        Ok(r)
    }
}

/// Parses an agent's resources in Mesos syntax, where `NAME(ROLE):VALUE`
/// reserves that part for ROLE: `cpus:4;mem:4096;cpus(eng):2;mem(eng):1024`.
/// Returns everything (reserved parts included) and the reservations.
pub fn parse_with_reservations(
    s: &str,
) -> Result<(Resources, Vec<(crate::Role, Resources)>), ParseError> {
    let mut unreserved = String::new();
    let mut by_role: BTreeMap<crate::Role, String> = BTreeMap::new();
    for part in s.split(';').map(str::trim).filter(|p| !p.is_empty()) {
        let (name, value) = part
            .split_once(':')
            .ok_or_else(|| ParseError::NotAPair(part.to_string()))?;
        match name
            .trim()
            .strip_suffix(')')
            .and_then(|n| n.split_once('('))
        {
            Some((kind, role)) => {
                let role = crate::Role::new(role).map_err(|e| ParseError::BadName(e.0))?;
                let entry = by_role.entry(role).or_default();
                entry.push_str(&format!("{kind}:{value};"));
            }
            None => unreserved.push_str(&format!("{part};")),
        }
    }
    let mut total: Resources = unreserved.parse()?;
    let mut reservations = Vec::new();
    for (role, text) in by_role {
        let r: Resources = text.parse()?;
        total = total.checked_add(&r).ok_or(ParseError::Overflow)?;
        reservations.push((role, r));
    }
    Ok((total, reservations))
}

fn parse_milli(name: &str, value: &str) -> Result<u64, ParseError> {
    let bad = || ParseError::BadNumber {
        name: name.to_string(),
        value: value.to_string(),
    };
    let (int, frac) = value.split_once('.').unwrap_or((value, ""));
    if int.is_empty()
        || frac.len() > 3
        || !int.bytes().chain(frac.bytes()).all(|b| b.is_ascii_digit())
    {
        return Err(bad());
    }
    let int: u64 = int.parse().map_err(|_| bad())?;
    let frac: u64 = format!("{frac:0<3}").parse().map_err(|_| bad())?;
    int.checked_mul(1000)
        .and_then(|i| i.checked_add(frac))
        .ok_or(ParseError::Overflow)
}

fn whole_units(name: &str, value: &str, milli: u64) -> Result<u64, ParseError> {
    if !milli.is_multiple_of(1000) {
        return Err(ParseError::BadNumber {
            name: name.to_string(),
            value: value.to_string(),
        });
    }
    Ok(milli / 1000)
}

fn parse_ports(value: &str) -> Result<Ports, ParseError> {
    let bad = || ParseError::BadPorts(value.to_string());
    let inner = value
        .strip_prefix('[')
        .and_then(|v| v.strip_suffix(']'))
        .ok_or_else(bad)?;
    let mut ranges = Vec::new();
    for piece in inner.split(',').map(str::trim).filter(|p| !p.is_empty()) {
        let (b, e) = piece.split_once('-').unwrap_or((piece, piece));
        let b: u16 = b.trim().parse().map_err(|_| bad())?;
        let e: u16 = e.trim().parse().map_err(|_| bad())?;
        ranges.push(PortRange::new(b, e)?);
    }
    Ports::try_from(ranges)
}

impl fmt::Display for Resources {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let milli = |m: u64| {
            if m.is_multiple_of(1000) {
                format!("{}", m / 1000)
            } else {
                format!("{}.{:03}", m / 1000, m % 1000)
                    .trim_end_matches('0')
                    .to_string()
            }
        };
        let mut parts = Vec::new();
        if self.cpus > 0 {
            parts.push(format!("cpus:{}", milli(self.cpus)));
        }
        if self.mem > 0 {
            parts.push(format!("mem:{}", self.mem));
        }
        if self.disk > 0 {
            parts.push(format!("disk:{}", self.disk));
        }
        if self.gpus > 0 {
            parts.push(format!("gpus:{}", self.gpus));
        }
        if !self.ports.0.is_empty() {
            let r: Vec<String> = self
                .ports
                .0
                .iter()
                .map(|r| format!("{}-{}", r.begin, r.end))
                .collect();
            parts.push(format!("ports:[{}]", r.join(",")));
        }
        for (k, v) in &self.scalars {
            parts.push(format!("{k}:{}", milli(*v)));
        }
        f.write_str(&parts.join(";"))
    }
}

/// An agent's attributes: named text values used by constraints
/// (`rack:a;zone:eu-1`).
#[derive(Debug, Clone, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(try_from = "Vec<(String, String)>", into = "Vec<(String, String)>")]
pub struct Attributes(BTreeMap<String, String>);

impl Attributes {
    pub fn get(&self, name: &str) -> Option<&str> {
        self.0.get(name).map(String::as_str)
    }
    pub fn iter(&self) -> impl Iterator<Item = (&str, &str)> {
        self.0.iter().map(|(k, v)| (k.as_str(), v.as_str()))
    }
}

impl TryFrom<Vec<(String, String)>> for Attributes {
    type Error = ParseError;
    fn try_from(v: Vec<(String, String)>) -> Result<Self, ParseError> {
        if v.len() > MAX_ENTRIES {
            return Err(ParseError::TooMany);
        }
        let mut map = BTreeMap::new();
        for (k, val) in v {
            check_name(&k)?;
            if val.len() > 256 {
                return Err(ParseError::Overflow);
            }
            if map.insert(k.clone(), val).is_some() {
                return Err(ParseError::Duplicate(k));
            }
        }
        Ok(Attributes(map))
    }
}
impl From<Attributes> for Vec<(String, String)> {
    fn from(a: Attributes) -> Self {
        a.0.into_iter().collect()
    }
}

impl std::str::FromStr for Attributes {
    type Err = ParseError;
    fn from_str(s: &str) -> Result<Self, ParseError> {
        let pairs = s
            .split(';')
            .map(str::trim)
            .filter(|p| !p.is_empty())
            .map(|p| {
                p.split_once(':')
                    .map(|(k, v)| (k.trim().to_string(), v.trim().to_string()))
                    .ok_or_else(|| ParseError::NotAPair(p.to_string()))
            })
            .collect::<Result<Vec<_>, _>>()?;
        Attributes::try_from(pairs)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn amounts_are_in_user_units_and_round_trip() -> Result<(), ParseError> {
        let r: Resources =
            "cpus:0.25;mem:64;gpus:1;disk:10;bandwidth:2.5;ports:[31000-31001]".parse()?;
        let amounts = r.to_amounts();
        assert!(amounts.contains(&("cpus".to_string(), 0.25)));
        assert!(amounts.contains(&("mem".to_string(), 64.0)));
        assert!(amounts.contains(&("bandwidth".to_string(), 2.5)));
        assert!(!amounts.iter().any(|(n, _)| n == "ports"));
        let back = Resources::from_amounts(amounts.iter().map(|(n, v)| (n.as_str(), *v)))?;
        assert_eq!(
            back.to_string(),
            "cpus:0.25;mem:64;disk:10;gpus:1;bandwidth:2.5"
        );
        for bad in [-1.0, f64::NAN, f64::INFINITY, 1e13] {
            assert!(Resources::from_amounts([("cpus", bad)]).is_err(), "{bad}");
        }
        assert!(Resources::from_amounts([("bad name", 1.0)]).is_err());
        Ok(())
    }

    fn r(s: &str) -> Resources {
        s.parse().expect("valid resources")
    }

    #[test]
    fn parses_and_prints_mesos_syntax() {
        let x = r("cpus:1.5;mem:1024;disk:10;gpus:1;ports:[31000-31009,31010-31020];fpga:0.25");
        assert_eq!(x.millicpus(), 1500);
        assert_eq!(
            x.ports().ranges(),
            &[PortRange::new(31000, 31020).expect("range")]
        );
        assert_eq!(
            x.to_string(),
            "cpus:1.5;mem:1024;disk:10;gpus:1;ports:[31000-31020];fpga:0.25"
        );
        assert_eq!(r(&x.to_string()), x);
    }

    #[test]
    fn reservations_parse_mesos_style() {
        let (total, reserved) =
            parse_with_reservations("cpus:2;mem:1024;cpus(eng):2;mem(eng/ml):512").expect("parse");
        assert_eq!(total, r("cpus:4;mem:1536"));
        assert_eq!(reserved.len(), 2);
        assert_eq!(reserved[0].0.as_str(), "eng");
        assert_eq!(reserved[0].1, r("cpus:2"));
        assert!(parse_with_reservations("cpus(bad role):1").is_err());
    }

    #[test]
    fn rejects_bad_text() {
        assert!("cpus:-1".parse::<Resources>().is_err());
        assert!("cpus:1.2345".parse::<Resources>().is_err());
        assert!("mem:1.5".parse::<Resources>().is_err());
        assert!("cpus".parse::<Resources>().is_err());
        assert!("cpus:1;cpus:2".parse::<Resources>().is_err());
        assert!("ports:[5-3]".parse::<Resources>().is_err());
        assert!("bad name:1".parse::<Resources>().is_err());
    }

    #[test]
    fn subtraction_never_goes_negative() {
        let total = r("cpus:2;mem:1024;ports:[100-200]");
        let part = r("cpus:0.5;mem:1024;ports:[150-160]");
        let left = total.checked_sub(&part).expect("contained");
        assert_eq!(left, r("cpus:1.5;ports:[100-149,161-200]"));
        assert_eq!(left.checked_sub(&part), None);
        assert_eq!(left.checked_add(&part), Some(total));
        assert_eq!(r("cpus:1").checked_sub(&r("gpu-x:1")), None);
    }

    #[test]
    fn ports_cannot_be_counted_twice() {
        assert_eq!(r("ports:[1-10]").checked_add(&r("ports:[10-12]")), None);
    }

    #[test]
    fn decode_rejects_inverted_ranges() {
        let bytes = postcard::to_stdvec(&vec![(10u16, 5u16)]).expect("encode");
        assert!(postcard::from_bytes::<Ports>(&bytes).is_err());
    }
}
