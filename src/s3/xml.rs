//! The little XML S3 answers in (RFC-free: the XML 1.0 subset S3 and its
//! compatible servers write): elements, attributes (skipped), text, the five
//! predefined entities and numeric references, CDATA, comments and the
//! declaration. Into a small tree; anything else is an error, not a guess.

/// One element: its local name (any `prefix:` dropped), its text (the
/// concatenated character data directly inside it) and its child elements.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct Element {
    pub name: String,
    pub text: String,
    pub children: Vec<Element>,
}

/// Elements nested deeper than this are refused: S3 answers are three or
/// four levels deep, and recursion must stay bounded on hostile input.
const DEPTH_MAX: usize = 16;

impl Element {
    /// The first child named `name`.
    pub fn child(&self, name: &str) -> Option<&Element> {
        self.children.iter().find(|child| child.name == name)
    }

    /// Every child named `name`.
    pub fn children_named<'a>(&'a self, name: &'a str) -> impl Iterator<Item = &'a Element> + 'a {
        self.children.iter().filter(move |child| child.name == name)
    }

    /// The text of the first child named `name`.
    pub fn child_text(&self, name: &str) -> Option<&str> {
        self.child(name).map(|child| child.text.as_str())
    }
}

/// Parses a document into its root element.
pub fn parse(input: &[u8]) -> Result<Element, String> {
    let text = std::str::from_utf8(input).map_err(|_| "the XML is not UTF-8".to_string())?;
    let mut parser = Parser { text, at: 0 };
    parser.skip_prolog()?;
    let root = parser.element(0)?;
    parser.skip_misc()?;
    if parser.at != text.len() {
        return Err(format!(
            "unexpected text after the root element at byte {}",
            parser.at
        ));
    }
    Ok(root)
}

struct Parser<'a> {
    text: &'a str,
    at: usize,
}

impl<'a> Parser<'a> {
    fn rest(&self) -> &'a str {
        &self.text[self.at..]
    }

    fn skip_whitespace(&mut self) {
        let rest = self.rest();
        self.at += rest.len() - rest.trim_start().len();
    }

    /// Skips what may precede the root: the declaration, comments, processing
    /// instructions, whitespace (no DOCTYPE: S3 never sends one).
    fn skip_prolog(&mut self) -> Result<(), String> {
        self.skip_misc()
    }

    fn skip_misc(&mut self) -> Result<(), String> {
        loop {
            self.skip_whitespace();
            if self.rest().starts_with("<?") {
                self.skip_past("?>")?;
            } else if self.rest().starts_with("<!--") {
                self.skip_past("-->")?;
            } else {
                return Ok(());
            }
        }
    }

    fn skip_past(&mut self, end: &str) -> Result<(), String> {
        match self.rest().find(end) {
            Some(index) => {
                self.at += index + end.len();
                Ok(())
            }
            None => Err(format!("unterminated construct (no {end:?})")),
        }
    }

    fn element(&mut self, depth: usize) -> Result<Element, String> {
        if depth >= DEPTH_MAX {
            return Err(format!("elements nested deeper than {DEPTH_MAX}"));
        }
        if !self.rest().starts_with('<') {
            return Err(format!("expected an element at byte {}", self.at));
        }
        self.at += 1;
        let name_end = self
            .rest()
            .find(|c: char| c.is_whitespace() || c == '>' || c == '/')
            .ok_or("unterminated start tag")?;
        let qualified = &self.rest()[..name_end];
        if qualified.is_empty() {
            return Err(format!("an element without a name at byte {}", self.at));
        }
        let name = local(qualified).to_string();
        self.at += name_end;
        // Attributes are skipped, quoted values honoured (they may hold `>`).
        let mut quote = None;
        let mut empty = false;
        loop {
            let Some(c) = self.rest().chars().next() else {
                return Err("unterminated start tag".into());
            };
            self.at += c.len_utf8();
            match (quote, c) {
                (Some(q), c) if c == q => quote = None,
                (Some(_), _) => {}
                (None, '"' | '\'') => quote = Some(c),
                (None, '>') => break,
                (None, '/') if self.rest().starts_with('>') => {
                    self.at += 1;
                    empty = true;
                    break;
                }
                (None, _) => {}
            }
        }
        let mut element = Element {
            name,
            ..Element::default()
        };
        if empty {
            return Ok(element);
        }
        loop {
            let rest = self.rest();
            if rest.is_empty() {
                return Err(format!("<{qualified}> is not closed"));
            }
            if let Some(after) = rest.strip_prefix("</") {
                let end = after.find('>').ok_or("unterminated end tag")?;
                if after[..end].trim() != qualified {
                    return Err(format!("</{}> closes <{qualified}>", after[..end].trim()));
                }
                self.at += 2 + end + 1;
                return Ok(element);
            }
            if rest.starts_with("<!--") {
                self.skip_past("-->")?;
            } else if let Some(after) = rest.strip_prefix("<![CDATA[") {
                let end = after.find("]]>").ok_or("unterminated CDATA")?;
                element.text.push_str(&after[..end]);
                self.at += "<![CDATA[".len() + end + 3;
            } else if rest.starts_with("<?") {
                self.skip_past("?>")?;
            } else if rest.starts_with('<') {
                let child = self.element(depth + 1)?;
                element.children.push(child);
            } else {
                let end = rest.find('<').unwrap_or(rest.len());
                decode_text(&rest[..end], &mut element.text)?;
                self.at += end;
            }
        }
    }
}

/// `prefix:name` to `name`.
fn local(qualified: &str) -> &str {
    qualified.rsplit(':').next().unwrap_or(qualified)
}

/// Character data with its references resolved.
fn decode_text(raw: &str, out: &mut String) -> Result<(), String> {
    let mut rest = raw;
    while let Some(amp) = rest.find('&') {
        out.push_str(&rest[..amp]);
        let after = &rest[amp + 1..];
        let end = after.find(';').ok_or("an unterminated character reference")?;
        let reference = &after[..end];
        let character = match reference {
            "amp" => '&',
            "lt" => '<',
            "gt" => '>',
            "quot" => '"',
            "apos" => '\'',
            _ => {
                let code = if let Some(hex) = reference
                    .strip_prefix("#x")
                    .or_else(|| reference.strip_prefix("#X"))
                {
                    u32::from_str_radix(hex, 16).ok()
                } else if let Some(decimal) = reference.strip_prefix('#') {
                    decimal.parse().ok()
                } else {
                    None
                };
                code.and_then(char::from_u32)
                    .ok_or_else(|| format!("unknown character reference &{reference};"))?
            }
        };
        out.push(character);
        rest = &after[end + 1..];
    }
    out.push_str(rest);
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_s3_listing_parses_into_its_tree() {
        let xml = br#"<?xml version="1.0" encoding="UTF-8"?>
<ListBucketResult xmlns="http://s3.amazonaws.com/doc/2006-03-01/">
  <Name>bucket</Name><Prefix>a/</Prefix><KeyCount>2</KeyCount>
  <IsTruncated>true</IsTruncated>
  <Contents><Key>a/b&amp;c</Key><Size>12</Size><ETag>&quot;abc&quot;</ETag></Contents>
  <Contents><Key>a/&#233;</Key><Size>0</Size></Contents>
  <NextContinuationToken>tok/+=</NextContinuationToken>
  <CommonPrefixes><Prefix>a/d/</Prefix></CommonPrefixes>
</ListBucketResult>"#;
        let root = parse(xml).unwrap();
        assert_eq!(root.name, "ListBucketResult");
        let keys: Vec<&str> = root
            .children_named("Contents")
            .filter_map(|c| c.child_text("Key"))
            .collect();
        assert_eq!(keys, ["a/b&c", "a/é"]);
        assert_eq!(
            root.child("Contents").unwrap().child_text("ETag"),
            Some("\"abc\"")
        );
        assert_eq!(root.child_text("NextContinuationToken"), Some("tok/+="));
        assert_eq!(
            root.child("CommonPrefixes").and_then(|p| p.child_text("Prefix")),
            Some("a/d/")
        );
    }

    #[test]
    fn prefixes_cdata_comments_and_empty_elements_are_read() {
        let root = parse(b"<s:A x='>'><!-- c --><s:B/><C><![CDATA[<raw>]]></C></s:A>").unwrap();
        assert_eq!(root.name, "A");
        assert_eq!(root.child("B").map(|b| b.text.as_str()), Some(""));
        assert_eq!(root.child_text("C"), Some("<raw>"));
    }

    #[test]
    fn broken_documents_are_errors() {
        for bad in [
            &b"<A><B></A>"[..],
            b"<A>",
            b"<A></B>",
            b"<A>&bogus;</A>",
            b"<A>&#xFFFFFFFF;</A>",
            b"text",
            b"<A/>trailing",
            b"\xff",
        ] {
            assert!(parse(bad).is_err(), "{:?}", String::from_utf8_lossy(bad));
        }
        let deep = "<a>".repeat(100) + &"</a>".repeat(100);
        assert!(parse(deep.as_bytes()).is_err());
    }
}
