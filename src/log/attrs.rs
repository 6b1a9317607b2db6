//! The attributes of a source object, laid out for a projection that holds a million of them.
//!
//! A directory object carries a handful of attributes, nearly all with one short value. As
//! a `BTreeMap<String, Vec<String>>` each of them cost three allocations (name, list, value)
//! and a tree node; here an object's attributes are one sorted vector, names and short
//! values are stored inline ([`CompactString`]) and a single value needs no list of its own
//! ([`SmallVec`]). The JSON is the same as the map's: an object of name to list, in name
//! order, so payloads and their hashes do not change.

use std::fmt;

use compact_str::CompactString;
use serde::de::{Deserializer, MapAccess, SeqAccess, Visitor};
use serde::ser::{SerializeMap, SerializeSeq, Serializer};
use serde::{Deserialize, Serialize};
use smallvec::SmallVec;

use super::event::AttrValue;

/// An attribute name (lower case).
pub type AttrName = CompactString;

/// The values of one attribute, in the order the source returned them.
#[derive(Clone, Default, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Values(SmallVec<[AttrValue; 1]>);

impl Values {
    pub fn new() -> Values {
        Values(SmallVec::new())
    }
    pub fn push(&mut self, v: AttrValue) {
        self.0.push(v);
    }
    pub fn truncate(&mut self, len: usize) {
        self.0.truncate(len);
    }
    pub fn to_vec(&self) -> Vec<AttrValue> {
        self.0.to_vec()
    }
}

impl std::ops::Deref for Values {
    type Target = [AttrValue];
    fn deref(&self) -> &[AttrValue] {
        &self.0
    }
}

impl std::ops::DerefMut for Values {
    fn deref_mut(&mut self) -> &mut [AttrValue] {
        &mut self.0
    }
}

impl From<Vec<AttrValue>> for Values {
    fn from(v: Vec<AttrValue>) -> Values {
        Values(SmallVec::from_vec(v))
    }
}

impl From<&[AttrValue]> for Values {
    fn from(v: &[AttrValue]) -> Values {
        Values(SmallVec::from(v))
    }
}

impl From<&Vec<AttrValue>> for Values {
    fn from(v: &Vec<AttrValue>) -> Values {
        Values::from(v.as_slice())
    }
}

impl FromIterator<AttrValue> for Values {
    fn from_iter<I: IntoIterator<Item = AttrValue>>(i: I) -> Values {
        Values(i.into_iter().collect())
    }
}

impl Extend<AttrValue> for Values {
    fn extend<I: IntoIterator<Item = AttrValue>>(&mut self, i: I) {
        self.0.extend(i);
    }
}

impl IntoIterator for Values {
    type Item = AttrValue;
    type IntoIter = smallvec::IntoIter<[AttrValue; 1]>;
    fn into_iter(self) -> Self::IntoIter {
        self.0.into_iter()
    }
}

impl<'a> IntoIterator for &'a Values {
    type Item = &'a AttrValue;
    type IntoIter = std::slice::Iter<'a, AttrValue>;
    fn into_iter(self) -> Self::IntoIter {
        self.0.iter()
    }
}

impl PartialEq<Vec<AttrValue>> for Values {
    fn eq(&self, other: &Vec<AttrValue>) -> bool {
        self.0[..] == other[..]
    }
}

impl PartialEq<Values> for Vec<AttrValue> {
    fn eq(&self, other: &Values) -> bool {
        self[..] == other.0[..]
    }
}

impl fmt::Debug for Values {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_list().entries(self.0.iter()).finish()
    }
}

impl Serialize for Values {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        let mut seq = s.serialize_seq(Some(self.0.len()))?;
        for v in &self.0 {
            seq.serialize_element(v)?;
        }
        seq.end()
    }
}

impl<'de> Deserialize<'de> for Values {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Values, D::Error> {
        struct S;
        impl<'de> Visitor<'de> for S {
            type Value = Values;
            fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
                f.write_str("a sequence")
            }
            fn visit_seq<A: SeqAccess<'de>>(self, mut s: A) -> Result<Values, A::Error> {
                let mut out = Values::new();
                while let Some(v) = s.next_element()? {
                    out.push(v);
                }
                Ok(out)
            }
        }
        d.deserialize_seq(S)
    }
}

/// Attribute name (lower case) to values, sorted by name, each name once.
#[derive(Clone, Default, PartialEq, Eq, Hash)]
pub struct Attrs(Vec<(AttrName, Values)>);

impl Attrs {
    pub fn new() -> Attrs {
        Attrs(Vec::new())
    }

    pub fn with_capacity(n: usize) -> Attrs {
        Attrs(Vec::with_capacity(n))
    }

    pub fn len(&self) -> usize {
        self.0.len()
    }

    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }

    fn find(&self, name: &str) -> Result<usize, usize> {
        // An object has a handful of attributes: comparing lengths first finds a name
        // sooner than a binary search of string comparisons.
        if self.0.len() <= 16 {
            return self
                .0
                .iter()
                .position(|(k, _)| k.as_str() == name)
                .ok_or_else(|| self.0.partition_point(|(k, _)| k.as_str() < name));
        }
        self.0.binary_search_by(|(k, _)| k.as_str().cmp(name))
    }

    pub fn get(&self, name: &str) -> Option<&Values> {
        self.find(name).ok().map(|i| &self.0[i].1)
    }

    pub fn get_mut(&mut self, name: &str) -> Option<&mut Values> {
        self.find(name).ok().map(|i| &mut self.0[i].1)
    }

    pub fn contains_key(&self, name: &str) -> bool {
        self.find(name).is_ok()
    }

    /// Set `name`'s values, returning the ones it had.
    pub fn insert(
        &mut self,
        name: impl Into<AttrName>,
        values: impl Into<Values>,
    ) -> Option<Values> {
        let name = name.into();
        // Names mostly arrive in order (decoding what was written sorted): append.
        if self.0.last().is_none_or(|(k, _)| *k < name) {
            self.0.push((name, values.into()));
            return None;
        }
        match self.find(&name) {
            Ok(i) => Some(std::mem::replace(&mut self.0[i].1, values.into())),
            Err(i) => {
                self.0.insert(i, (name, values.into()));
                None
            }
        }
    }

    pub fn clear(&mut self) {
        self.0.clear();
    }

    pub fn remove(&mut self, name: &str) -> Option<Values> {
        self.find(name).ok().map(|i| self.0.remove(i).1)
    }

    pub fn retain(&mut self, mut keep: impl FnMut(&AttrName, &mut Values) -> bool) {
        self.0.retain_mut(|(k, v)| keep(k, v));
    }

    pub fn iter(
        &self,
    ) -> impl DoubleEndedIterator<Item = (&AttrName, &Values)> + ExactSizeIterator {
        self.into_iter()
    }

    pub fn keys(&self) -> impl DoubleEndedIterator<Item = &AttrName> + ExactSizeIterator {
        self.0.iter().map(|(k, _)| k)
    }

    pub fn values(&self) -> impl DoubleEndedIterator<Item = &Values> + ExactSizeIterator {
        self.0.iter().map(|(_, v)| v)
    }
}

impl std::ops::Index<&str> for Attrs {
    type Output = Values;
    /// Panics when the attribute is absent, as a map's index does.
    fn index(&self, name: &str) -> &Values {
        match self.get(name) {
            Some(v) => v,
            None => panic!("no attribute {name:?}"),
        }
    }
}

impl<K: Into<AttrName>, V: Into<Values>> FromIterator<(K, V)> for Attrs {
    /// A name given twice keeps its last values, as a map's collect does.
    fn from_iter<I: IntoIterator<Item = (K, V)>>(i: I) -> Attrs {
        let mut out = Attrs::new();
        out.extend(i);
        out
    }
}

impl<K: Into<AttrName>, V: Into<Values>> Extend<(K, V)> for Attrs {
    fn extend<I: IntoIterator<Item = (K, V)>>(&mut self, i: I) {
        let i = i.into_iter();
        self.0.reserve(i.size_hint().0);
        for (k, v) in i {
            self.insert(k, v);
        }
    }
}

impl<V: Into<Values>, const N: usize> From<[(AttrName, V); N]> for Attrs {
    fn from(a: [(AttrName, V); N]) -> Attrs {
        a.into_iter().collect()
    }
}

impl IntoIterator for Attrs {
    type Item = (AttrName, Values);
    type IntoIter = std::vec::IntoIter<(AttrName, Values)>;
    fn into_iter(self) -> Self::IntoIter {
        self.0.into_iter()
    }
}

impl<'a> IntoIterator for &'a Attrs {
    type Item = (&'a AttrName, &'a Values);
    type IntoIter = std::iter::Map<
        std::slice::Iter<'a, (AttrName, Values)>,
        fn(&'a (AttrName, Values)) -> (&'a AttrName, &'a Values),
    >;
    fn into_iter(self) -> Self::IntoIter {
        self.0.iter().map(|(k, v)| (k, v))
    }
}

impl fmt::Debug for Attrs {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_map().entries(self.iter()).finish()
    }
}

impl Serialize for Attrs {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        let mut m = s.serialize_map(Some(self.0.len()))?;
        for (k, v) in &self.0 {
            m.serialize_entry(k.as_str(), v)?;
        }
        m.end()
    }
}

impl<'de> Deserialize<'de> for Attrs {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Attrs, D::Error> {
        struct M;
        impl<'de> Visitor<'de> for M {
            type Value = Attrs;
            fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
                f.write_str("a map")
            }
            fn visit_map<A: MapAccess<'de>>(self, mut m: A) -> Result<Attrs, A::Error> {
                let mut out = Attrs::with_capacity(m.size_hint().unwrap_or(0));
                while let Some(k) = m.next_key::<AttrName>()? {
                    let v: Values = m.next_value()?;
                    out.insert(k, v);
                }
                Ok(out)
            }
        }
        d.deserialize_map(M)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;
    use std::collections::BTreeMap;

    fn text(s: &str) -> AttrValue {
        AttrValue::Text(s.into())
    }

    #[test]
    fn a_map_in_name_order_whatever_the_order_of_insertion() {
        let mut a = Attrs::new();
        assert_eq!(a.insert("sn", vec![text("b")]), None);
        assert_eq!(a.insert("cn", vec![text("a")]), None);
        assert_eq!(a.insert("mail", vec![text("m")]), None);
        assert_eq!(
            a.insert("cn", vec![text("c")]),
            Some(Values::from(vec![text("a")]))
        );
        assert_eq!(
            a.keys().map(|k| k.as_str()).collect::<Vec<_>>(),
            ["cn", "mail", "sn"]
        );
        assert_eq!(a["cn"], vec![text("c")]);
        assert_eq!(a.remove("mail"), Some(vec![text("m")].into()));
        assert!(!a.contains_key("mail"));
        assert_eq!(a.remove("mail"), None);
        assert_eq!(a.len(), 2);
        assert_eq!(
            format!("{a:?}"),
            r#"{"cn": [Text("c")], "sn": [Text("b")]}"#
        );
    }

    #[test]
    fn a_name_given_twice_keeps_its_last_values() {
        let a: Attrs = serde_json::from_str(r#"{"cn":["a"],"sn":["s"],"cn":["b"]}"#).unwrap();
        assert_eq!(a["cn"], vec![text("b")]);
        let b = Attrs::from([
            ("cn".into(), vec![text("a")]),
            ("cn".into(), vec![text("b")]),
        ]);
        assert_eq!(b["cn"], vec![text("b")]);
        assert_eq!(b.len(), 1);
    }

    proptest! {
        /// Same JSON as the map it replaces, both ways, so stored payloads and their hashes
        /// are unchanged; and the same answers to every question asked of it.
        #[test]
        fn same_json_and_answers_as_a_btreemap(
            ops in proptest::collection::vec(
                ("[a-f]{1,3}", proptest::collection::vec("[ -~é]{0,30}", 0..3), any::<bool>()),
                0..40,
            )
        ) {
            let mut map: BTreeMap<String, Vec<AttrValue>> = BTreeMap::new();
            let mut attrs = Attrs::new();
            for (k, vs, remove) in ops {
                if remove {
                    prop_assert_eq!(
                        map.remove(&k).map(Values::from),
                        attrs.remove(&k)
                    );
                } else {
                    let vs: Vec<AttrValue> = vs.iter().map(|s| text(s)).collect();
                    prop_assert_eq!(
                        map.insert(k.clone(), vs.clone()).map(Values::from),
                        attrs.insert(k, vs)
                    );
                }
            }
            let json = serde_json::to_string(&map).unwrap();
            prop_assert_eq!(&serde_json::to_string(&attrs).unwrap(), &json);
            prop_assert_eq!(&serde_json::from_str::<Attrs>(&json).unwrap(), &attrs);
            for (k, v) in &map {
                prop_assert_eq!(attrs.get(k), Some(&Values::from(v)));
            }
            prop_assert_eq!(attrs.len(), map.len());
        }
    }
}
