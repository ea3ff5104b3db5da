#!/usr/bin/env perl
# Prints the sytest test files that declare the tests named on stdin (one
# name per line), for sytest/run's rerun of failed whitelisted tests.
#
# Usage: test-files.pl SYTEST_DIR < names
#
# A test is declared as `test "NAME",` or `multi_test "NAME",`; names built
# from variables ("... in room version $version") match any text where the
# variable stands. A name no file declares is reported on stderr and exits 1,
# so the caller does not rerun a partial set.
use strict;
use warnings;
use File::Find;

my $dir = shift @ARGV or die "usage: $0 SYTEST_DIR < names\n";
my @names = grep { length } map { chomp; $_ } <STDIN>;

my @decls;   # [ regex, file ]
find( { no_chdir => 1, wanted => sub {
   return unless m/\.pl$/;
   my $file = $File::Find::name;
   open my $fh, "<:encoding(UTF-8)", $file or die "cannot open $file: $!\n";
   while( my $line = <$fh> ) {
      next unless $line =~ m/^\s*(?:multi_)?test\s+"((?:[^"\\]|\\.)*)"/;
      my @parts = split m/(\$\{?\w+\}?)/, $1;
      my $re = join "", map { m/^\$/ ? ".+" : quotemeta } @parts;
      ( my $rel = $file ) =~ s{^\Q$dir\E/?}{};
      push @decls, [ qr/^$re$/, $rel ];
   }
} }, "$dir/tests" );

my ( %files, $missing );
foreach my $name ( @names ) {
   my @hits = map { $_->[1] } grep { $name =~ $_->[0] } @decls;
   if( !@hits ) {
      print STDERR "test-files: no file declares \"$name\"\n";
      $missing = 1;
   }
   $files{$_} = 1 for @hits;
}
print "$_\n" for sort keys %files;
exit( $missing ? 1 : 0 );
