//! A Prometheus text page as the tests read it: samples with their labels,
//! and each family's TYPE; and a scrape over real HTTP.

use std::collections::{BTreeMap, BTreeSet};
use std::io::{Read, Write};

/// One scraped sample.
#[derive(Debug, Clone)]
pub struct Series {
    pub name: String,
    pub labels: BTreeMap<String, String>,
    pub value: f64,
}

/// A `/metrics` page: its samples and each family's TYPE.
#[derive(Debug, Default)]
pub struct Page {
    pub series: Vec<Series>,
    pub types: BTreeMap<String, String>,
}

impl Page {
    pub fn parse(text: &str) -> Self {
        let mut page = Self::default();
        for line in text.lines() {
            if let Some(rest) = line.strip_prefix("# TYPE ") {
                let (name, t) = rest.split_once(' ').expect("TYPE line");
                page.types.insert(name.to_owned(), t.to_owned());
                continue;
            }
            if line.starts_with('#') || line.is_empty() {
                continue;
            }
            page.series.push(parse_sample(line));
        }
        page
    }

    pub fn names(&self) -> BTreeSet<&str> {
        self.series.iter().map(|s| s.name.as_str()).collect()
    }

    pub fn of<'a>(&'a self, name: &'a str) -> impl Iterator<Item = &'a Series> + 'a {
        self.series.iter().filter(move |s| s.name == name)
    }

    pub fn value(&self, name: &str, labels: &[(&str, &str)]) -> Option<f64> {
        self.of(name)
            .find(|s| {
                labels
                    .iter()
                    .all(|(k, v)| s.labels.get(*k).map(String::as_str) == Some(*v))
            })
            .map(|s| s.value)
    }

    /// The values label `key` takes in family `name`.
    pub fn label_values(&self, name: &str, key: &str) -> BTreeSet<String> {
        self.of(name)
            .filter_map(|s| s.labels.get(key).cloned())
            .collect()
    }
}

pub fn parse_sample(line: &str) -> Series {
    let (head, value) = line.rsplit_once(' ').expect("value");
    let value: f64 = value.parse().unwrap_or_else(|_| panic!("value in {line}"));
    let Some((name, rest)) = head.split_once('{') else {
        return Series {
            name: head.to_owned(),
            labels: BTreeMap::new(),
            value,
        };
    };
    let mut labels = BTreeMap::new();
    let mut chars = rest.chars().peekable();
    loop {
        let key: String = chars.by_ref().take_while(|&c| c != '=').collect();
        assert_eq!(chars.next(), Some('"'), "{line}");
        let mut v = String::new();
        while let Some(c) = chars.next() {
            match c {
                '\\' => match chars.next() {
                    Some('n') => v.push('\n'),
                    Some(o) => v.push(o),
                    None => panic!("{line}"),
                },
                '"' => break,
                o => v.push(o),
            }
        }
        labels.insert(key.trim_start_matches(',').to_owned(), v);
        match chars.next() {
            Some(',') if chars.peek() == Some(&'}') => break,
            Some(',') => continue,
            Some('}') => break,
            other => panic!("{other:?} in {line}"),
        }
    }
    Series {
        name: name.to_owned(),
        labels,
        value,
    }
}

/// `GET /metrics` from 127.0.0.1:`port`, over real HTTP, parsed.
pub fn scrape(port: u16) -> Page {
    let mut s = std::net::TcpStream::connect(("127.0.0.1", port)).expect("connect");
    write!(
        s,
        "GET /metrics HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n"
    )
    .expect("send");
    let mut body = String::new();
    s.read_to_string(&mut body).expect("read");
    let (head, body) = body.split_once("\r\n\r\n").expect("HTTP reply");
    assert!(head.starts_with("HTTP/1.1 200"), "{head}");
    Page::parse(body)
}
